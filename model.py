"""A Llama in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU; a static KV cache for sampling.

Module and parameter names follow Hugging Face's LlamaForCausalLM (without its `model.` prefix), and RoPE
uses the same "rotate half" convention, so exporting to transformers is a pure rename.
"""
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def auto_device():
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


@dataclass
class ModelConfig:
    dim: int = 288
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int = 0  # 0: same as n_heads (no grouping)
    vocab_size: int = 50257
    hidden_dim: int = 0  # SwiGLU inner size; 0: 2/3 of 4*dim rounded up to multiple_of, as Llama does
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    dropout: float = 0.0
    tie_embeddings: bool = False
    attn_backend: str = "auto"  # auto | fa4 | fa2 | sdpa | math; the env LLAMA_ATTN_BACKEND overrides auto

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        if not self.hidden_dim:
            self.hidden_dim = self.multiple_of * math.ceil(int(2 * 4 * self.dim / 3) / self.multiple_of)
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim={self.dim} must divide by n_heads={self.n_heads}, "
                             f"and n_heads by n_kv_heads={self.n_kv_heads}")
        if self.attn_backend not in ATTENTION_BACKENDS and self.attn_backend != "auto":
            raise ValueError(f"attn_backend={self.attn_backend!r}: use auto, {', '.join(ATTENTION_BACKENDS)}")


# ----------------------------------------------------------------------------- attention backends
# All take and return (batch, time, heads, head_dim), the flash-attn layout; k and v may have fewer heads.

def _fa4(q, k, v):
    from flash_attn.cute import flash_attn_func
    return flash_attn_func(q, k, v, causal=True)[0]


def _fa2(q, k, v):
    from flash_attn import flash_attn_func
    return flash_attn_func(q, k, v, causal=True)


def _sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=k.shape[2] != q.shape[2])
    return out.transpose(1, 2)


def _math(q, k, v):
    """The plain definition, the reference the others are tested against."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T, S = q.shape[2], k.shape[2]
    causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    return (scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v).transpose(1, 2)


ATTENTION_BACKENDS = {"fa4": _fa4, "fa2": _fa2, "sdpa": _sdpa, "math": _math}
_chosen = {}  # (requested, device, dtype) -> backend name, so the choice is made and logged once


def _candidates(requested, q):
    if requested != "auto":
        return [requested]
    names = ["sdpa"]
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        names.insert(0, "fa2")
        if torch.cuda.get_device_capability(q.device)[0] >= 9:
            names.insert(0, "fa4")
    return names


def causal_attention(q, k, v, backend="auto"):
    """Causal attention through the fastest kernel that is installed and accepts these inputs.

    Order: an explicit backend (or LLAMA_ATTN_BACKEND) wins; else FlashAttention-4 on sm90+ in bf16/fp16,
    then FlashAttention-2, then torch's scaled_dot_product_attention. A missing package or a kernel that
    refuses the input falls through to the next.
    """
    if backend == "auto":
        backend = os.environ.get("LLAMA_ATTN_BACKEND", "auto")
    key = (backend, q.device.type, q.dtype)
    if key not in _chosen:
        _chosen[key] = _choose_backend(backend, q, k, v)
    return ATTENTION_BACKENDS[_chosen[key]](q, k, v)


@torch.compiler.disable  # imports and probes run once, eagerly, outside torch.compile's graph
def _choose_backend(backend, q, k, v):
    candidates = _candidates(backend, q)
    for name in candidates:
        try:
            ATTENTION_BACKENDS[name](q, k, v)
        except (ImportError, RuntimeError, TypeError, ValueError, NotImplementedError) as e:
            if name == candidates[-1]:  # an explicit choice, or SDPA itself, failed: nothing left to try
                raise
            print(f"attention: {name} unavailable ({type(e).__name__}: {str(e).splitlines()[0][:100]})",
                  file=sys.stderr)
            continue
        print(f"attention backend: {name} ({q.device.type}, {str(q.dtype).replace('torch.', '')})", file=sys.stderr)
        return name


# ----------------------------------------------------------------------------- blocks

def rope_tables(head_dim, max_seq_len, theta):
    """cos and sin of shape (max_seq_len, head_dim), halves repeated: HF Llama's rotate-half layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x: (B, T, H, D); cos, sin: (T, 1, D). Rotates each pair (i, i + D/2) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def transposed(*linears):
    """The linears' weights side by side as one (in, sum of outs) matrix: x @ it computes them all.

    Used while sampling: on CPU, MKL's product of one row with a (out, in) weight streams it at a third
    of the bandwidth it reaches on the (in, out) layout, and one product instead of three saves op overhead.
    """
    return torch.cat([linear.weight.detach() for linear in linears]).t().contiguous()


class Linear(nn.Linear):
    """nn.Linear without bias that multiplies by weight_t, a transposed copy, while one is set (sampling)."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias=False)
        self.weight_t = None

    def forward(self, x):
        return F.linear(x, self.weight) if self.weight_t is None else x @ self.weight_t


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.dim // cfg.n_heads
        self.backend = cfg.attn_backend
        self.q_proj = Linear(cfg.dim, cfg.n_heads * self.head_dim)
        self.k_proj = Linear(cfg.dim, cfg.n_kv_heads * self.head_dim)
        self.v_proj = Linear(cfg.dim, cfg.n_kv_heads * self.head_dim)
        self.o_proj = Linear(cfg.n_heads * self.head_dim, cfg.dim)
        self.cache_k = self.cache_v = None  # (B, n_kv_heads, max_seq_len, head_dim) while sampling
        self.qkv_t = None  # transposed(q_proj, k_proj, v_proj) while sampling

    def forward(self, x, cos, sin, start_pos):
        B, T, _ = x.shape
        if self.qkv_t is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            kv_size = self.n_kv_heads * self.head_dim
            q, k, v = (x @ self.qkv_t).split([self.n_heads * self.head_dim, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if start_pos is None:  # training or a full forward: no cache
            out = causal_attention(q, k, v, self.backend)
        else:
            self.cache_k[:, :, start_pos:start_pos + T] = k.transpose(1, 2)
            self.cache_v[:, :, start_pos:start_pos + T] = v.transpose(1, 2)
            if start_pos == 0:  # prefill: the prompt attends to itself
                out = causal_attention(q, k, v, self.backend)
            else:  # decode, one token: attend to everything cached so far
                keys = self.cache_k[:, :, :start_pos + T]
                values = self.cache_v[:, :, :start_pos + T]
                out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values,
                                                     enable_gqa=self.n_kv_heads != self.n_heads).transpose(1, 2)
        return self.o_proj(out.reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = Linear(cfg.dim, cfg.hidden_dim)
        self.up_proj = Linear(cfg.dim, cfg.hidden_dim)
        self.down_proj = Linear(cfg.hidden_dim, cfg.dim)
        self.gate_up_t = None  # transposed(gate_proj, up_proj) while sampling

    def forward(self, x):
        if self.gate_up_t is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = (x @ self.gate_up_t).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, start_pos):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, start_pos))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Llama(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = Linear(config.dim, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(config.dim // config.n_heads, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # residual output projections scaled down with depth (GPT-2), here o_proj and down_proj
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, start_pos=None):
        """Logits and loss. Without targets only the last position's logits are computed.

        start_pos: None for a plain forward; during sampling, the cache position of idx[:, 0]
        (0 for the prefill of a prompt, then one position per decode step).
        """
        T = idx.shape[1]
        offset = start_pos or 0
        if offset + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {offset + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
        cos, sin = self.rope_cos[offset:offset + T, None, :], self.rope_sin[offset:offset + T, None, :]
        h = self.dropout(self.embed_tokens(idx))
        for layer in self.layers:
            h = layer(h, cos, sin, start_pos)
        h = self.norm(h)
        if targets is None:
            return self.lm_head(h[:, [-1], :]).float(), None
        logits = self.lm_head(h).float()
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on matrices only (not norms), fused on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    def flops_per_token(self, seq_len):
        """PaLM's estimate for a forward and backward: 6N + 12*L*H*Q*T, N without the embedding lookup."""
        cfg = self.config
        n = self.num_params() - (0 if cfg.tie_embeddings else self.embed_tokens.weight.numel())
        return 6 * n + 12 * cfg.n_layers * cfg.n_heads * (cfg.dim // cfg.n_heads) * seq_len

    def estimate_mfu(self, seq_len, tokens_per_s, device):
        """Model FLOPs utilisation against the GPU's bf16 dense peak; None on CPU or an unknown GPU."""
        peak = peak_flops(device)
        return None if peak is None else self.flops_per_token(seq_len) * tokens_per_s / peak

    # ------------------------------------------------------------------------- sampling

    def setup_cache(self, batch_size, dtype=None, device=None):
        """Preallocates the static KV cache for max_seq_len positions (gpt-fast's way).

        Also keeps transposed (and, for q/k/v and gate/up, fused) copies of the weights for the
        sampling steps; see transposed(). On CPU this makes decoding 1.6x faster.
        """
        cfg = self.config
        dtype = dtype or self.lm_head.weight.dtype
        device = device or self.lm_head.weight.device
        self.lm_head.weight_t = transposed(self.lm_head)
        for layer in self.layers:
            attn = layer.self_attn
            shape = (batch_size, cfg.n_kv_heads, cfg.max_seq_len, attn.head_dim)
            attn.cache_k = torch.zeros(shape, dtype=dtype, device=device)
            attn.cache_v = torch.zeros(shape, dtype=dtype, device=device)
            attn.qkv_t = transposed(attn.q_proj, attn.k_proj, attn.v_proj)
            attn.o_proj.weight_t = transposed(attn.o_proj)
            layer.mlp.gate_up_t = transposed(layer.mlp.gate_proj, layer.mlp.up_proj)
            layer.mlp.down_proj.weight_t = transposed(layer.mlp.down_proj)

    def clear_cache(self):
        self.lm_head.weight_t = None
        for layer in self.layers:
            attn = layer.self_attn
            attn.cache_k = attn.cache_v = attn.qkv_t = attn.o_proj.weight_t = None
            layer.mlp.gate_up_t = layer.mlp.down_proj.weight_t = None

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
               eos_id=None, use_cache=True):
        """Yields the next token of each sequence, shape (B, 1), one step at a time.

        A prefill of the prompt, then one-token decode steps against the static KV cache. Sequences that
        produced eos_id keep yielding eos_id; the stream ends when all have, or after max_new_tokens.
        When the context outgrows max_seq_len it restarts from its last max_seq_len // 2 tokens (prefilled
        again), so sampling can go on past max_seq_len. use_cache=False recomputes the whole context
        every step (nanoGPT's way), with the same windows, so it gives the same tokens.
        """
        B, window = idx.shape[0], self.config.max_seq_len
        if idx.shape[1] > window:
            raise ValueError(f"prompt of {idx.shape[1]} tokens exceeds max_seq_len={window}; crop it first")
        seen = torch.zeros(B, self.config.vocab_size, dtype=torch.bool, device=idx.device)
        seen.scatter_(1, idx, True)
        done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
        context, cached = idx, 0  # the tokens the model sees, and how many of them are in the cache
        if use_cache:
            self.setup_cache(B)
        try:
            for _ in range(max_new_tokens):
                if use_cache:  # prefill of the whole context when the cache is empty, else one new token
                    logits, _ = self(context[:, cached:], start_pos=cached)
                    cached = context.shape[1]
                else:
                    logits, _ = self(context)
                token = sample_token(logits[:, -1, :], seen, temperature, top_k, top_p, repetition_penalty)
                if eos_id is not None:
                    token = token.masked_fill(done, eos_id)
                    done |= token == eos_id
                seen.scatter_(1, token, True)
                yield token
                if eos_id is not None and bool(done.all()):
                    return
                context = torch.cat((context, token), dim=1)
                if context.shape[1] > window:  # no room: restart from the last half of the context
                    context, cached = context[:, -(window // 2):], 0
        finally:
            if use_cache:
                self.clear_cache()

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                 eos_id=None, use_cache=True):
        """The prompt followed by the new tokens, as nanoGPT's generate; temperature=0 is greedy.

        Sequences that finished early are padded with eos_id.
        """
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_id,
                               use_cache))
        return torch.cat([idx, *new], dim=1)


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
    """Keeps the smallest set of most likely tokens whose probabilities reach p (nucleus sampling)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # probability mass of the tokens ranked above each one
    drop_sorted = before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_token(logits, seen, temperature, top_k, top_p, repetition_penalty):
    """(B, V) logits -> (B, 1) token ids: penalty, then temperature (0: greedy), top-k, top-p."""
    logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    # inverse-CDF draw: one uniform per row (torch.multinomial draws one exponential per vocabulary
    # entry, 0.7 ms a token for 32K ids on CPU); right=True never lands on a zero-probability token
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)


# ----------------------------------------------------------------------------- MFU

# bf16 dense tensor-core peaks, FLOP/s, matched in order against torch.cuda.get_device_name()
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
              ("H20", 148e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
              ("L40", 181e12), ("L4", 121e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
              ("A6000", 155e12), ("V100", 125e12), ("T4", 65e12)]


def peak_flops(device):
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)
