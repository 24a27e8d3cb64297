"""Inference: the KV cache, the sampling filters, and the stream / generate API.

sample.py, bench.py, eval.py and serve.py all sample through here (fastdecode.py loads the model and makes its
steps fast). The model (model.py) is the network only: it is handed a cache and the position of its input, and
this file decides what to feed it.

  for tokens in stream(model, prompt_ids, 200, seed=7, eos_id=eot): ...   # (B, 1) tokens, one step at a time
"""

import torch

import tokenizer
from configurator import SAMPLING

# Below this temperature sampling is greedy: a logit gap of 1e-3, about the rounding of fp32 logits of
# size 10 and far below any real preference, is already a factor e^-100 at 1e-5; and dividing by a tinier
# one overflows to inf, which leaves nothing to sample.
GREEDY_BELOW = 1e-5


def encode_prompt(enc, text, context):
    """(ids, warning): <|endoftext|> then the text, as every story was in training, cropped to its last
    context - 1 tokens (room for one new token) when longer, with a warning saying so (else None)."""
    ids = [enc.eot_token] + enc.encode(text, allowed_special={tokenizer.EOT})
    if len(ids) < context:
        return ids, None
    warning = (
        f"the prompt has {len(ids)} tokens and the model's context is {context}; kept its last {context - 1}"
    )
    return ids[-(context - 1) :], warning


def new_cache(model, batch_size):
    """The static KV cache: one (k, v) pair of (B, n_kv_heads, max_seq_len + 1, head_dim) buffers per layer.

    The slot past the context is never written; it keeps a filled part of the cache from ever being all of it,
    a case the compiled step's dynamic length would otherwise have to treat apart.
    """
    cfg, weight = model.config, model.embed_tokens.weight  # the model's dtype, whatever its matrices are in
    shape = (batch_size, cfg.n_kv_heads, cfg.max_seq_len + 1, cfg.head_dim)
    return [
        (
            torch.zeros(shape, dtype=weight.dtype, device=weight.device),
            torch.zeros(shape, dtype=weight.dtype, device=weight.device),
        )
        for _ in range(cfg.n_layers)
    ]


# ----------------------------------------------------------------------------- sampling filters


def apply_repetition_penalty(logits, seen, penalty):
    """HF semantics: seen tokens' positive logits are divided by penalty, negative ones multiplied."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def top_k_filter(logits, k):
    """Keeps the k largest logits of each row (ties at the k-th value are kept too)."""
    if not 0 < k < logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Keeps the smallest set of most likely tokens whose probabilities reach p (nucleus sampling).

    The nucleus is looked for among the top 64 tokens first, then 8 times as many, until it ends inside them:
    sorting the whole vocabulary every token cost more than the model's own step.
    """
    if p >= 1.0:
        return logits
    vocab, k = logits.shape[-1], 64
    all_probs = logits.softmax(-1)
    while True:
        probs, order = all_probs.topk(min(k, vocab), dim=-1)  # sorted, most likely first
        before = probs.cumsum(-1) - probs  # probability mass of the tokens ranked above each one
        if k >= vocab or bool((before[:, -1] >= p).all()):  # each row's nucleus ends inside its top k
            break
        k *= 8
    nucleus = before < p
    nucleus[:, 0] = True  # the most likely token always: a p too small for float32 would otherwise keep none
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, nucleus)
    return logits.masked_fill(~keep, float("-inf"))


def sample_token(logits, seen, generators, temperature, top_k, top_p, repetition_penalty):
    """(B, V) logits -> (B, 1) token ids: penalty, temperature (below GREEDY_BELOW: greedy), top-k, top-p.

    Row i draws from generators[i], so a sequence's text does not depend on the others in its batch.
    """
    logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1, keepdim=True)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    # inverse-CDF draw: one uniform per row (torch.multinomial draws one exponential per vocabulary entry,
    # as costly as a decode step for 32K ids on CPU); right=True never lands on a zero-probability token
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g) for g in generators]).to(cdf.device)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)


# ----------------------------------------------------------------------------- stream and generate


@torch.no_grad()
def stream(
    model,
    idx,
    max_new_tokens,
    temperature=SAMPLING["temperature"],
    top_k=SAMPLING["top_k"],
    top_p=SAMPLING["top_p"],
    repetition_penalty=SAMPLING["repetition_penalty"],
    eos_id=None,
    seed=0,
    step=None,
):
    """Yields the next token of each sequence of idx (B, T), shape (B, 1), one step at a time.

    A prefill of the prompt into the static KV cache, then one-token decode steps. Row i samples with a
    generator seeded seed + i, so it gets the text it would get alone with that seed. Sequences that produced
    eos_id keep yielding eos_id; the stream ends when all have, or after max_new_tokens. When the context
    outgrows max_seq_len it restarts from its last max_seq_len // 2 tokens (prefilled again), so sampling can
    go on past max_seq_len. step: fastdecode's compiled one-token step, for every decode step after a prefill
    (which the model makes, eagerly).
    """
    B, window = idx.shape[0], model.config.max_seq_len
    if idx.shape[1] > window:
        raise ValueError(f"prompt of {idx.shape[1]} tokens exceeds max_seq_len={window}; crop it first")
    generators = [torch.Generator().manual_seed(seed + i) for i in range(B)]
    seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=idx.device)
    seen.scatter_(1, idx, True)
    done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
    cache = new_cache(model, B)
    context, cached = idx, 0  # the tokens the model sees, and how many of them are in the cache
    for _ in range(max_new_tokens):
        new = context[:, cached:]  # the whole context when the cache is empty (a prefill), else one token
        if step is not None and new.shape[1] == 1 and cached > 0:
            # a fresh (B, 1) tensor: a slice of the context has a stride that grows with it, and each new
            # stride would recompile the step (and re-record its CUDA graph)
            logits = step(new.clone(memory_format=torch.contiguous_format), cache, cached)
        else:
            logits = model(new, cache=cache, pos=cached)
        cached = context.shape[1]
        token = sample_token(logits, seen, generators, temperature, top_k, top_p, repetition_penalty)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        seen.scatter_(1, token, True)
        yield token
        if eos_id is not None and bool(done.all()):
            return
        context = torch.cat((context, token), dim=1)
        if context.shape[1] > window:  # no room: restart from the last half of the context
            context, cached = context[:, -(window // 2) :], 0


def generate(model, idx, max_new_tokens, **settings):
    """The prompt followed by the new tokens, as nanoGPT's generate; temperature=0 is greedy.

    Sequences that finished early are padded with eos_id. settings: those of stream().
    """
    return torch.cat([idx, *stream(model, idx, max_new_tokens, **settings)], dim=1)
