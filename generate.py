"""Inference: the KV cache, prefill and decode steps, the sampling filters, and the stream / generate API.

sample.py, bench.py, eval.py and serve.py all sample through here. The model (model.py) is the network
only: it is handed a cache and the position of its input, and this file decides what to feed it.

  model = prepare_for_decoding(model)
  for tokens in stream(model, prompt_ids, 200, seed=7, eos_id=eot): ...   # (B, 1) tokens, one step at a time

A compiled one-token step (compile_for_decoding; decode_step applies the scripts' --compile rule) can take
every decode step after the prefill: stream(..., step=step).
"""

import getpass
import hashlib
import os
import sys
import tempfile
import time

import torch
import torch.nn as nn

import tokenizer

# the seeds' recommended settings: sample.py's and serve.py's defaults, and the exported generation_config.json
DEFAULTS = {"temperature": 0.7, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 256}


def check_settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens):
    """ValueError naming the first setting out of range, with the range."""
    if not 0 <= temperature <= 100:
        raise ValueError(f"temperature={temperature} must be in [0, 100] (0 is greedy)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 turns it off)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1 turns it off)")
    if not 0.1 <= repetition_penalty <= 10:
        raise ValueError(
            f"repetition_penalty={repetition_penalty} must be in [0.1, 10] (1 turns it off; "
            "above 1 discourages repeats)"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")


def encode_prompt(enc, text, context):
    """(ids, warning): <|endoftext|> then the text, as every story was in training, cropped to its last
    context - 1 tokens (room for one new token) when longer, with a warning saying so (else None)."""
    ids = [enc.eot_token] + enc.encode(text, allowed_special={tokenizer.EOT})
    if len(ids) < context:
        return ids, None
    return ids[-(context - 1) :], (
        f"the prompt has {len(ids)} tokens and the model's context is {context}; kept its last {context - 1}"
    )


def prepare_for_decoding(model, quantize=""):
    """A one-time change of layout for sampling: eval mode, no gradients, on CPU every matrix stored
    transposed (the same values, the same modules), and with quantize the matrices in fewer bytes.

    One row times a (out, in) matrix runs at a third of the bandwidth MKL reaches on the (in, out) layout
    (8 against 24 GB/s here), and F.linear on the transposed storage takes the fast path. A tied head gets
    its own copy, so the embedding lookup keeps its rows contiguous.

    Decoding reads every weight once per token, so it runs at the speed of memory: quantize='bf16' stores
    every matrix in bf16 (BF16Linear), 'int8' the output head in int8 (Int8Linear, the head is most of a
    small model's bytes) and the other matrices in bf16: on the blocks' small matrices inductor's int8 kernel
    ran 4x slower than bf16 (170 against 42 us at 768 x 288). The embedding stays as it is (one row a token).
    Use check_quantize first. A quantized model is for decoding only: its matrices become buffers (not counted
    by num_params) and forward(idx, targets), which reads lm_head.weight, no longer applies.
    """
    model.eval().requires_grad_(False)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if quantize:
                low = Int8Linear if quantize == "int8" and child is model.lm_head else BF16Linear
                setattr(parent, name, low(child.weight))
            elif child.weight.device.type == "cpu":
                child.weight = nn.Parameter(child.weight.t().contiguous().t(), requires_grad=False)
    return model


QUANTIZE = ("", "bf16", "int8")


def check_quantize(quantize, device):
    """ValueError unless --quantize is one of QUANTIZE, and '' off the CPU (the only device it was measured on)."""
    if quantize not in QUANTIZE:
        raise ValueError(f"--quantize={quantize!r}: use bf16, int8, or leave it out (fp32 weights)")
    if quantize and device.split(":")[0] != "cpu":
        raise ValueError(
            f"--quantize={quantize} is for decoding on the CPU; on {device}, --dtype=bfloat16 "
            "is the fast path"
        )


class BF16Linear(nn.Module):
    """A matrix stored in bf16 (half of fp32's bytes). Its input is rounded to bf16, the product is summed in
    fp32 and handed back in the input's dtype, rounded to bf16: autocast's numerics, for one matrix."""

    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())

    def forward(self, x):
        return nn.functional.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


class Int8Linear(nn.Module):
    """A matrix in int8 (a quarter of fp32's bytes) with a bf16 scale per output row: w = q * scale, where
    scale is the row's largest |w| / 127. The product is torch._weight_int8pack_mm on the bf16-rounded input,
    which inductor compiles into its own int8 kernel; the result comes back in the input's dtype.

    That kernel reads rows in blocks of 16 columns and fails (wrong sums, or a crash) on any other width, so
    a width that is not a multiple of 16 is padded with zero columns, and the input with zeros.
    """

    def __init__(self, weight):
        super().__init__()
        w = weight.detach().float()
        scales = (w.abs().amax(1) / 127).clamp(min=1e-30).to(torch.bfloat16)  # a row of zeros stays zeros
        q = (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.pad = -w.shape[1] % 16
        self.register_buffer("weight", nn.functional.pad(q, (0, self.pad)).contiguous())
        self.register_buffer("scales", scales)

    def forward(self, x):
        rows = nn.functional.pad(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), (0, self.pad))
        return torch._weight_int8pack_mm(rows, self.weight, self.scales).view(*x.shape[:-1], -1).to(x.dtype)


def compile_for_decoding(model, batch_size, build=True):
    """The one-token decode step, compiled: step(idx, cache, pos) gives the model's logits for (batch_size, 1)
    tokens at the int position pos, writing their keys and values into the cache as the model does.

    On CPU it is an AOTInductor package: max-autotune with inductor's own matrix kernels (they use every core
    for a single row, where MKL's use one) and the cache's length up to pos as its one dynamic size, so
    attention reads only the filled part. It is built once for these weights, shape, batch size and thread
    count (30-60 s) and cached under TORCHINDUCTOR_CACHE_DIR; later runs load it in a fraction of a second.
    build=False returns None unless it is cached. On GPUs it is torch.compile with CUDA graphs
    (mode="reduce-overhead"), compiled in each process: static shapes, with a tensor position and attention
    over the whole cache, masked. Raises RuntimeError when compiling or loading fails; with build=True a
    package that cannot be loaded is built again.
    """
    device = next(model.parameters()).device.type
    if device != "cpu":  # nothing is cached off the CPU: build or nothing
        if not build:
            return None
        if device != "cuda":
            raise RuntimeError(f"there is no compiled decode step for {device}")
        step = static_step(model, mode="reduce-overhead")
        try:  # compile now, on a scratch cache, so that a failure is said here and not at the first token
            step(torch.zeros(batch_size, 1, dtype=torch.long, device="cuda"), new_cache(model, batch_size), 1)
        except Exception as e:
            raise _compile_error(e) from e
        return step
    if not build and not (os.path.isdir(_package_dir()) and os.listdir(_package_dir())):
        return None  # nothing was ever built here: no need to hash the weights to know it
    path = _package_path(model, batch_size)
    if os.path.exists(path):
        try:
            return _load_package(path)
        except RuntimeError:
            if not build:
                raise
    elif not build:
        return None
    _build_package(model, batch_size, path)  # replaces one that cannot be loaded
    return _load_package(path)


def _load_package(path):
    # the loader itself, not torch._inductor.aoti_load_package: that imports all of inductor (1.5 s) to load
    # a package in 0.1 s
    try:
        package = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, -1)
    except RuntimeError as e:
        raise RuntimeError(
            f"the compiled decode step {path} cannot be loaded ({_first_line(e)}); "
            "--compile=True builds it again"
        ) from e
    return lambda idx, cache, pos: package.boxed_run(
        [idx, torch.empty(pos + 1), *(t for kv in cache for t in kv)]
    )[0]


def check_compile(compile):
    """ValueError unless --compile is None, True or False."""
    if compile is not None and not isinstance(compile, bool):
        raise ValueError(
            f"--compile={compile!r}: use True (build the compiled decode step when needed), False, "
            "or leave it out (use it when it is built)"
        )


def decode_step(model, batch_size, compile=None):
    """The scripts' --compile: None takes the compiled step when it is built already (else None, with a note
    on stderr saying how to build it), True builds it when needed, False never. Compiling that fails is said
    on stderr and gives None (eager decoding). ValueError for any other value (check_compile)."""
    check_compile(compile)
    if compile is False:
        return None
    began = time.perf_counter()
    try:
        step = compile_for_decoding(model, batch_size, build=compile is True)
    except RuntimeError as e:
        print(f"warning: {e}; decoding eagerly", file=sys.stderr)
        return None
    if step is not None and compile:
        print(f"compiled decode step ready in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    elif step is None and next(model.parameters()).device.type == "cpu":
        print(
            "note: decoding eagerly; --compile=True builds this checkpoint's compiled decode step once "
            "(30-60 s; 3-4x faster at 15M-42M parameters), and later runs use it by themselves",
            file=sys.stderr,
        )
    return step


def static_step(model, **compile_options):
    """The decode step as torch.compile(model, **compile_options) sees it with static shapes: the position
    as a tensor, attention over the whole cache (masked), and the cache buffers marked as fixed addresses
    (CUDA graphs replay those), so one graph serves every position."""
    compiled = torch.compile(model, fullgraph=True, **compile_options)

    def step(idx, cache, pos):
        for t in (t for kv in cache for t in kv):
            torch._dynamo.mark_static_address(t)
        return compiled(idx, cache=cache, pos=torch.tensor(pos, device=idx.device))

    return step


class _DecodeStep(nn.Module):
    """What is exported: the model's forward with the cache as flat inputs it writes in place, and the
    position as the length of an empty tensor (a package's inputs are tensors; a size can be dynamic)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, length, *cache):
        return self.model(idx, cache=list(zip(cache[::2], cache[1::2])), pos=length.shape[0] - 1)


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]


def _compile_error(error):
    """A failed compile (no C++ compiler, an unsupported op, no Triton), its cause in one line."""
    return RuntimeError(f"compiling the decode step failed ({type(error).__name__}: {_first_line(error)})")


def _package_path(model, batch_size):
    """The cached package's file: named by a hash of all that the compiled code depends on."""
    key = hashlib.sha256(
        repr(
            (
                torch.__version__,
                torch.backends.cpu.get_cpu_capability(),
                torch.get_num_threads(),
                model.config,
                batch_size,
            )
        ).encode()
    )
    for source in (__file__, sys.modules[type(model).__module__].__file__):  # this code and the model's
        with open(source, "rb") as f:
            key.update(f.read())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().contiguous().view(torch.uint8).numpy())
    return os.path.join(_package_dir(), key.hexdigest()[:32] + ".pt2")


def _package_dir():
    """decode/ in inductor's own cache directory (its rule, without importing inductor: 1.2 s), so clearing one
    clears both."""
    cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"
    )
    return os.path.join(cache_dir, "decode")


def _build_package(model, batch_size, path):
    idx, length = torch.zeros(batch_size, 1, dtype=torch.long), torch.empty(min(8, model.config.max_seq_len))
    cache = [t for kv in new_cache(model, batch_size) for t in kv]
    dynamic = (
        None,
        {0: torch.export.Dim("length", min=2, max=model.config.max_seq_len)},
        (None,) * len(cache),
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[: -len('.pt2')]}.{os.getpid()}.tmp.pt2"
    try:
        with torch.no_grad():
            program = torch.export.export(_DecodeStep(model), (idx, length, *cache), dynamic_shapes=dynamic)
            torch._inductor.aoti_compile_and_package(
                program,
                package_path=tmp,
                inductor_configs={
                    "max_autotune": True,
                    "max_autotune_gemm_backends": "CPP",
                    "freezing": True,
                },
            )
        os.replace(tmp, path)  # whole or not at all: another process may be loading it
    except Exception as e:  # a missing compiler, an unsupported op: the reason, in one line
        raise _compile_error(e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def new_cache(model, batch_size):
    """The static KV cache: one (k, v) pair of (B, n_kv_heads, max_seq_len + 1, head_dim) buffers per layer.

    The slot past the context is never written; it keeps a filled part of the cache from ever being all of
    it, a case the compiled step's dynamic length would otherwise have to treat apart.
    """
    cfg, weight = (
        model.config,
        model.embed_tokens.weight,
    )  # the model's dtype, whatever its matrices are stored in
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

    The nucleus is looked for among the top 64 tokens first, then 8 times as many, until it ends inside
    them: sorting the whole vocabulary every token cost more than the model's own step (2.8 ms at 32K ids).
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
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, before < p)
    return logits.masked_fill(~keep, float("-inf"))


def sample_token(logits, seen, generators, temperature, top_k, top_p, repetition_penalty):
    """(B, V) logits -> (B, 1) token ids: penalty, then temperature (0: greedy), top-k, top-p.

    Row i draws from generators[i], so a sequence's text does not depend on the others in its batch.
    """
    logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    # inverse-CDF draw: one uniform per row (torch.multinomial draws one exponential per vocabulary
    # entry, 0.7 ms a token for 32K ids on CPU); right=True never lands on a zero-probability token
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g) for g in generators]).to(cdf.device)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)


# ----------------------------------------------------------------------------- stream and generate


@torch.no_grad()
def stream(
    model,
    idx,
    max_new_tokens,
    temperature=DEFAULTS["temperature"],
    top_k=DEFAULTS["top_k"],
    top_p=DEFAULTS["top_p"],
    repetition_penalty=DEFAULTS["repetition_penalty"],
    eos_id=None,
    seed=0,
    use_cache=True,
    step=None,
):
    """Yields the next token of each sequence of idx (B, T), shape (B, 1), one step at a time.

    A prefill of the prompt into the static KV cache, then one-token decode steps. Row i samples with a
    generator seeded seed + i, so it gets the text it would get alone with that seed. Sequences that
    produced eos_id keep yielding eos_id; the stream ends when all have, or after max_new_tokens. When the
    context outgrows max_seq_len it restarts from its last max_seq_len // 2 tokens (prefilled again), so
    sampling can go on past max_seq_len. use_cache=False recomputes the whole context every step
    (nanoGPT's way) over the same windows, so it gives the same tokens. step: compile_for_decoding's
    compiled one-token step, for every decode step after a prefill (which the model makes, eagerly).
    """
    B, window = idx.shape[0], model.config.max_seq_len
    if idx.shape[1] > window:
        raise ValueError(f"prompt of {idx.shape[1]} tokens exceeds max_seq_len={window}; crop it first")
    generators = [torch.Generator().manual_seed(seed + i) for i in range(B)]
    seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=idx.device)
    seen.scatter_(1, idx, True)
    done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
    cache = new_cache(model, B) if use_cache else None
    context, cached = idx, 0  # the tokens the model sees, and how many of them are in the cache
    for _ in range(max_new_tokens):
        if use_cache:  # prefill of the whole context when the cache is empty, else one new token
            new = context[:, cached:]
            if step is not None and new.shape[1] == 1 and cached > 0:
                # a fresh (B, 1) tensor: a slice of the context has a stride that grows with it, and each new
                # stride would recompile the step (and re-record its CUDA graph)
                logits = step(new.clone(memory_format=torch.contiguous_format), cache, cached)
            else:
                logits = model(new, cache=cache, pos=cached)
            cached = context.shape[1]
        else:
            logits = model(context)
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
