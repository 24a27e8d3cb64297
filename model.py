"""A Llama in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU. The network only.

Inference state lives outside it: forward takes an optional KV cache (one (k, v) pair of buffers per layer,
made by generate.py) and the position of its first token. Names follow Hugging Face's LlamaForCausalLM, with
q/k/v and gate/up fused into one matrix each (as nanoGPT and gpt-fast do: one product instead of three); hf.py
splits them on export. RoPE uses HF's "rotate half" convention.
"""

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    attn_backend: str = "auto"  # auto | fa4 | fa2 | sdpa | math

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        if not self.hidden_dim:
            self.hidden_dim = self.multiple_of * math.ceil(int(2 * 4 * self.dim / 3) / self.multiple_of)
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"dim={self.dim} must divide by n_heads={self.n_heads}, "
                f"and n_heads by n_kv_heads={self.n_kv_heads}"
            )
        if (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"the head size dim / n_heads = {self.dim // self.n_heads} must be even for RoPE"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.attn_backend not in ATTENTION_BACKENDS and self.attn_backend != "auto":
            raise ValueError(f"attn_backend={self.attn_backend!r}: use auto, {', '.join(ATTENTION_BACKENDS)}")

    @property
    def head_dim(self):
        return self.dim // self.n_heads


# ----------------------------------------------------------------------------- attention backends
# All take and return (batch, time, heads, head_dim), the flash-attn layout; k and v may have fewer heads.


def _fa4(q, k, v):
    if not _fa4_registered:  # done eagerly, by the backend's probe, before torch.compile traces this
        _register_fa4()
    return torch.ops.llama.fa4(q.contiguous(), k.contiguous(), v.contiguous())[0]


_fa4_registered = False


def _register_fa4():
    """FlashAttention-4's causal forward and backward kernels as a torch.library custom op with an autograd
    formula: torch.compile keeps it in the training graph as one opaque call (dynamo cannot trace the CuTe DSL
    code behind flash_attn_func), and the backward runs FA4's own kernel on the saved log-sum-exp. Registered
    on first use, so importing this module imports neither flash_attn nor torch.library's machinery."""

    @torch.library.custom_op("llama::fa4", mutates_args=())
    def fa4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from flash_attn.cute.interface import _flash_attn_fwd

        out, lse = _flash_attn_fwd(q, k, v, causal=True, return_lse=True)[:2]
        return out.contiguous(), lse.contiguous()  # the layouts the fake below promises the compiler

    @fa4.register_fake
    def _(q, k, v):  # out like q; the log-sum-exp in fp32, (batch, heads, time)
        return torch.empty_like(q), q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)

    @torch.library.custom_op("llama::fa4_backward", mutates_args=())
    def fa4_backward(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        dout: torch.Tensor,
        lse: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from flash_attn.cute.interface import _flash_attn_bwd

        dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3]
        return dq.contiguous(), dk.contiguous(), dv.contiguous()

    @fa4_backward.register_fake
    def _(q, k, v, out, dout, lse):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def save(ctx, inputs, output):
        ctx.save_for_backward(*inputs, *output)

    def backward(ctx, dout, dlse):  # the lse is the op's own: nothing flows back through it
        q, k, v, out, lse = ctx.saved_tensors
        return fa4_backward(q, k, v, out, dout.contiguous(), lse)

    fa4.register_autograd(backward, setup_context=save)
    global _fa4_registered
    _fa4_registered = True


def _fa2(q, k, v):
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, causal=True)


def _sdpa(q, k, v):
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        enable_gqa=k.shape[2] != q.shape[2],
    )
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

    Order: an explicit backend wins; else FlashAttention-4 on sm90+ in bf16/fp16, then FlashAttention-2, then
    torch's scaled_dot_product_attention. A missing package or a kernel that refuses the input falls through
    to the next.
    """
    key = (backend, q.device.type, q.dtype)
    if key not in _chosen:
        # imports and probes run once, eagerly, outside any graph torch.compile is tracing (wrapping the
        # function at import time instead would import torch._dynamo in every script, a second or more)
        choose = torch.compiler.disable(_choose_backend) if torch.compiler.is_compiling() else _choose_backend
        _chosen[key] = choose(key[0], q, k, v)
    return ATTENTION_BACKENDS[_chosen[key]](q, k, v)


class BackendError(RuntimeError):
    pass


def pick_attention_backend(config, device, dtype):
    """Chooses (and logs) the kernel for this device and dtype now, eagerly: called before torch.compile, the
    compiled graph then holds the chosen kernel and no graph break. Raises BackendError."""
    probe = torch.zeros(1, 8, config.n_heads, config.head_dim, device=device, dtype=dtype)
    kv = probe[:, :, : config.n_kv_heads]
    causal_attention(probe, kv, kv, config.attn_backend)
    return _chosen[(config.attn_backend, probe.device.type, dtype)]


def _choose_backend(backend, q, k, v):
    candidates = _candidates(backend, q)
    for name in candidates:
        try:
            ATTENTION_BACKENDS[name](q, k, v)
        except (ImportError, RuntimeError, TypeError, ValueError, NotImplementedError) as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}" if str(e) else type(e).__name__
            if name == candidates[-1]:  # an explicit choice, or SDPA itself, failed: nothing left to try
                raise BackendError(
                    f"attention backend {name} cannot run on {q.device.type} "
                    f"{str(q.dtype).replace('torch.', '')} ({reason}); use --attn_backend=auto"
                )
            print(f"attention: {name} unavailable ({reason})", file=sys.stderr)
            continue
        print(
            f"attention backend: {name} ({q.device.type}, {str(q.dtype).replace('torch.', '')})",
            file=sys.stderr,
        )
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
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.backend = cfg.attn_backend
        self.qkv_proj = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache=None, positions=None, visible=None):
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim],
            dim=-1,
        )
        q = apply_rope(q.view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if cache is None:  # training or a full forward: the fastest causal kernel
            out = causal_attention(q, k, v, self.backend)
        else:  # write this chunk's keys and values at its positions, then attend to the cache up to them
            cache_k, cache_v = cache
            cache_k.index_copy_(2, positions, k.transpose(1, 2))
            cache_v.index_copy_(2, positions, v.transpose(1, 2))
            out = cached_attention(q, cache_k[:, :, :visible], cache_v[:, :, :visible], positions)
        return self.o_proj(out.reshape(B, T, -1))


def cached_attention(q, cache_k, cache_v, positions):
    """q (B, T, H, D) at positions (T,) against the cache's (B, H_kv, S, D) keys and values: each query sees
    the cache slots up to its own position.

    SDPA with that mask, except in a compiled one-token step: there plain products, one query row per head,
    which inductor turns into a single fused loop over the cache (SDPA's CPU kernel took three times longer).
    """
    q = q.transpose(1, 2)
    seen = torch.arange(cache_k.shape[2], device=q.device) <= positions[:, None]  # (T, S)
    if q.shape[2] == 1 and torch.compiler.is_compiling():
        if (
            cache_k.shape[1] != q.shape[1]
        ):  # grouped-query attention: a key head serves a group of query heads
            cache_k, cache_v = (
                x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (cache_k, cache_v)
            )
        scores = q @ cache_k.transpose(-2, -1) * q.shape[-1] ** -0.5
        return (scores.masked_fill(~seen, float("-inf")).softmax(-1) @ cache_v).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q, cache_k, cache_v, attn_mask=seen, enable_gqa=cache_k.shape[1] != q.shape[1]
    )
    return out.transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, positions=None, visible=None):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, cache, positions, visible))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Llama(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
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

    def hidden(self, idx, cache=None, pos=0):
        """The final normed hidden states (B, T, dim) of tokens idx placed at positions pos, pos + 1, ...

        cache: None, or one (k, v) pair of (B, n_kv_heads, S, head_dim) buffers per layer (S at least
        max_seq_len); this chunk's keys and values are written at [pos, pos + T), and each token attends to
        every cached position up to its own, so a prompt can be fed in chunks at any offset. pos is an int (or
        a symbolic one, in an exported graph): attention reads the first pos + T slots. Or a 0-d tensor, for a
        graph of static shapes (CUDA graphs): attention then spans the whole cache, masked by position.
        """
        T = idx.shape[1]
        if not isinstance(pos, torch.Tensor) and pos + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {pos + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
        positions = torch.arange(T, device=idx.device) + pos
        if isinstance(pos, torch.Tensor):  # a position known only when the graph runs: gather its rows
            cos, sin, visible = self.rope_cos[positions, None, :], self.rope_sin[positions, None, :], None
        else:  # a slice, so that training graphs hold no gather (an indirect load in RoPE's fused kernels)
            cos, sin, visible = (
                self.rope_cos[pos : pos + T, None, :],
                self.rope_sin[pos : pos + T, None, :],
                pos + T,
            )
        h = self.dropout(self.embed_tokens(idx))
        for layer, layer_cache in zip(self.layers, cache or [None] * len(self.layers)):
            h = layer(h, cos, sin, layer_cache, positions, visible)
        return self.norm(h)

    def forward(self, idx, targets=None, cache=None, pos=0):
        """With targets: the mean cross-entropy over targets that are not -1, without ever holding the (B, T,
        vocab) logits. Without: the float32 logits of the last position, (B, vocab)."""
        h = self.hidden(idx, cache, pos)
        if targets is None:
            return self.lm_head(h[:, -1]).float()
        return chunked_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten())

    def flops_per_token(self, seq_len):
        """PaLM's estimate for a forward and backward: 6N + 12*L*H*Q*T, N without the embedding lookup."""
        cfg = self.config
        n = self.num_params() - (0 if cfg.tie_embeddings else self.embed_tokens.weight.numel())
        return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


# ----------------------------------------------------------------------------- loss

LOSS_CHUNK_ELEMENTS = 2**26  # logits alive at once: 256 MB in fp32 (1335 rows of GPT-2's 50257), not B*T rows


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of h @ weight.T against targets, a chunk of rows at a time.

    Each chunk's gradients are computed while its logits exist (softmax minus one-hot is all the backward
    needs), so the full logits are never held: memory is one chunk of logits plus the gradients themselves,
    and no product is computed twice. Rows whose target is -1 are ignored.
    """

    @staticmethod
    def forward(ctx, h, weight, targets):
        valid = targets != -1
        count = valid.sum().clamp(min=1)
        total = torch.zeros((), device=h.device, dtype=torch.float32)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        chunk = max(1, LOSS_CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, h.shape[0], chunk):
            rows, target, keep = (
                h[start : start + chunk],
                targets[start : start + chunk],
                valid[start : start + chunk],
            )
            logits = (rows @ weight.t().to(rows.dtype)).float()
            logsumexp = logits.logsumexp(-1)
            target_logit = logits.gather(1, target.clamp(min=0)[:, None])[:, 0]
            total += ((logsumexp - target_logit) * keep).sum()
            if need_grad:
                probs = logits.sub_(logsumexp[:, None]).exp_()  # in place: one chunk-sized tensor at a time
                probs[torch.arange(len(rows), device=h.device), target.clamp(min=0)] -= 1
                probs *= keep[:, None]
                probs = probs.to(rows.dtype)
                grad_h[start : start + chunk] = probs @ weight.to(rows.dtype)
                grad_w += (probs.t() @ rows).float()
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_loss / count
        return grad_h * scale.to(grad_h.dtype), (grad_w * scale).to(ctx.weight_dtype), None


def chunked_cross_entropy(h, weight, targets):
    """Mean cross-entropy of the logits h @ weight.T (rows of h, targets -1 ignored), chunk by chunk."""
    if not torch.is_grad_enabled():  # evaluation: detached inputs tell forward to skip the gradients
        h, weight = h.detach(), weight.detach()
    return _LinearCrossEntropy.apply(h, weight, targets)
