import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import all_logits, tiny

import model as M
from model import Llama, ModelConfig


def test_changing_a_token_never_changes_earlier_logits():
    model = tiny()
    idx = torch.randint(0, 97, (2, 20))
    base = all_logits(model, idx)
    for t in (0, 7, 19):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 97
        logits = all_logits(model, changed)
        assert torch.equal(logits[:, :t], base[:, :t])
        assert not torch.allclose(logits[:, t], base[:, t])


def test_forward_without_targets_gives_the_last_positions_logits():
    model = tiny()
    idx = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(model(idx), all_logits(model, idx)[:, -1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("chunks", [[24], [10] + [1] * 14, [5, 7, 1, 11], [1, 3, 20]])
@pytest.mark.parametrize("position", [int, torch.tensor], ids=["int", "tensor"])
def test_chunks_fed_through_the_cache_at_any_offset_equal_the_full_forward(n_kv_heads, chunks, position):
    """A tensor position (static shapes: attention over the whole cache, masked) and an int one agree."""
    from generate import new_cache

    model = tiny(n_kv_heads=n_kv_heads)
    idx = torch.randint(0, 97, (3, 24))
    full = all_logits(model, idx)
    cache, pos = new_cache(model, 3), 0
    for size in chunks:  # a prefill, one-token steps, and multi-token chunks at later positions
        torch.testing.assert_close(
            all_logits(model, idx[:, pos : pos + size], cache, position(pos)),
            full[:, pos : pos + size],
            rtol=0,
            atol=1e-5,
        )
        pos += size


def test_stale_cache_slots_beyond_the_position_are_never_seen():
    """A cache reused after the window restarts holds old keys past the new position; they are masked."""
    from generate import new_cache

    model = tiny()
    idx = torch.randint(0, 97, (1, 12))
    cache = new_cache(model, 1)
    for k, v in cache:
        k.normal_(), v.normal_()
    for pos in (0, torch.tensor(0)):
        torch.testing.assert_close(
            all_logits(model, idx, cache, pos), all_logits(model, idx), rtol=0, atol=1e-5
        )


def test_a_sequence_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))


def test_grouped_query_attention_with_repeated_kv_heads_equals_multi_head_attention():
    gqa, mha = tiny(n_kv_heads=2), tiny(n_kv_heads=4)
    state = gqa.state_dict()
    head_dim = 64 // 4
    for name, w in state.items():
        if name.endswith("qkv_proj.weight"):  # each kv head serves 2 query heads
            q, k, v = w.split([64, 2 * head_dim, 2 * head_dim])
            k, v = (
                x.view(2, head_dim, 64).repeat_interleave(2, dim=0).reshape(4 * head_dim, 64) for x in (k, v)
            )
            state[name] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(all_logits(gqa, idx), all_logits(mha, idx), rtol=0, atol=1e-5)


def test_rope_scores_depend_only_on_relative_offset():
    cos, sin = M.rope_tables(16, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        rq = M.apply_rope(q, cos[m : m + 1, None], sin[m : m + 1, None])
        rk = M.apply_rope(k, cos[n : n + 1, None], sin[n : n + 1, None])
        return (rq * rk).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-5)
    assert score(9, 9) == pytest.approx(score(0, 0), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_rope_rotates_halves_like_hf_llama():
    cos, sin = M.rope_tables(8, 4, 10000.0)
    x = torch.arange(8.0).view(1, 1, 1, 8)
    out = M.apply_rope(x, cos[1:2, None], sin[1:2, None])[0, 0, 0]
    # pair (i, i + 4) at position 1 is rotated by angle theta^(-2i/8)
    for i in range(4):
        a = 10000.0 ** (-2 * i / 8)
        assert out[i].item() == pytest.approx(i * math.cos(a) - (i + 4) * math.sin(a), abs=1e-5)
        assert out[i + 4].item() == pytest.approx((i + 4) * math.cos(a) + i * math.sin(a), abs=1e-5)


def flash_skip(name):
    """Why a FlashAttention backend cannot run here (its package or a CUDA GPU is missing), else None."""
    package = {"fa4": "flash_attn.cute", "fa2": "flash_attn"}.get(name)
    if package is None:
        return None
    try:
        __import__(package)
    except ImportError:
        return f"{package} is not installed"
    return None if torch.cuda.is_available() else "FlashAttention needs a CUDA GPU"


@pytest.mark.parametrize("name", ["sdpa", "fa2", "fa4"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_every_backend_that_can_run_here_agrees_with_the_math_reference(name, kv_heads):
    """SDPA runs everywhere and is never skipped; a FlashAttention kernel only where its package and a GPU are
    (tests/test_cuda.py checks them on the GPU in bf16)."""
    if flash_skip(name):
        pytest.skip(flash_skip(name))
    device = "cuda" if name != "sdpa" else "cpu"
    dtype = torch.bfloat16 if name != "sdpa" else torch.float32
    q = torch.randn(2, 12, 4, 16, device=device, dtype=dtype)
    k, v = (torch.randn(2, 12, kv_heads, 16, device=device, dtype=dtype) for _ in range(2))
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    expected = M._math(q.float(), k.float(), v.float())
    torch.testing.assert_close(
        M.causal_attention(q, k, v, name).float(), expected, rtol=tolerance, atol=tolerance
    )


def test_the_math_reference_is_causal_softmax_attention_written_out_by_hand():
    """_math, the reference for the kernels, against a loop over positions and heads."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 5, 4, 8), torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8)
    out = M._math(q, k, v)
    for t in range(5):
        for h in range(4):
            kv = h // 2  # query heads 0, 1 share key head 0; 2, 3 key head 1
            weights = torch.softmax(torch.stack([q[0, t, h] @ k[0, s, kv] / 8**0.5 for s in range(t + 1)]), 0)
            expected = sum(w * v[0, s, kv] for s, w in enumerate(weights))
            torch.testing.assert_close(out[0, t, h], expected, rtol=1e-5, atol=1e-6)


def test_the_backend_is_chosen_and_logged_once_per_device_and_dtype(capsys, monkeypatch):
    monkeypatch.setattr(M, "_chosen", {})
    q = torch.randn(1, 4, 2, 8)
    M.causal_attention(q, q, q)
    assert "attention backend: sdpa (cpu, float32)" in capsys.readouterr().err
    M.causal_attention(q, q, q)
    assert capsys.readouterr().err == ""  # logged once


def test_a_flash_kernel_that_fails_falls_through_to_sdpa(capsys, monkeypatch):
    def refuses(q, k, v):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer")

    monkeypatch.setattr(M, "_chosen", {})
    monkeypatch.setattr(M, "_candidates", lambda requested, q: ["fa2", "sdpa"])
    monkeypatch.setitem(M.ATTENTION_BACKENDS, "fa2", refuses)
    q = torch.randn(1, 4, 2, 8)
    torch.testing.assert_close(M.causal_attention(q, q, q), M._math(q, q, q))
    err = capsys.readouterr().err
    assert "attention: fa2 unavailable (RuntimeError: FlashAttention only supports" in err
    assert "attention backend: sdpa" in err


def test_an_explicit_backend_that_cannot_run_raises_one_clear_error():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(M.BackendError, match="attention backend fa4 cannot run on cpu"):
        M.causal_attention(q, q, q, "fa4")  # needs CUDA and flash-attn-4


def fake_flash_attn_4(calls):
    """flash_attn.cute.interface's two kernel entry points in plain torch: the forward gives the log-sum-exp
    of each row's scores, and the backward works from it, as FlashAttention's does."""

    def scores(q, k):
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
        return s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))

    def forward(q, k, v, causal, return_lse):
        assert causal and return_lse
        calls.append("forward")
        return M._math(q, k, v).contiguous(), scores(q, k).logsumexp(-1), None  # FA4 returns more

    def backward(q, k, v, out, dout, lse, causal):
        calls.append("backward")
        group = q.shape[2] // k.shape[2]
        p = (scores(q, k) - lse[..., None]).exp()
        dp = torch.einsum("bthd,bshd->bhts", dout, v.repeat_interleave(group, dim=2))
        ds = p * (dp - (dout * out).sum(-1).transpose(1, 2)[..., None]) / math.sqrt(q.shape[-1])
        dq = torch.einsum("bhts,bshd->bthd", ds, k.repeat_interleave(group, dim=2))
        per_head = (torch.einsum("bhts,bthd->bshd", ds, q), torch.einsum("bhts,bthd->bshd", p, dout))
        dk, dv = (g.unflatten(2, (k.shape[2], group)).sum(3) for g in per_head)
        return dq, dk, dv

    fake = types.ModuleType("flash_attn.cute.interface")
    fake._flash_attn_fwd, fake._flash_attn_bwd = forward, backward
    return fake


def test_fa4_is_one_custom_op_that_compiles_without_breaks_and_differentiates_by_its_backward_kernel(
    monkeypatch,
):
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", fake_flash_attn_4(calls))
    monkeypatch.setattr(M, "_chosen", {})
    q, k, v = (torch.randn(2, 12, h, 16, requires_grad=True) for h in (4, 2, 2))
    M._fa4(q, k, v).square().sum().backward()
    assert calls == ["forward", "backward"]  # no recomputation of the forward for the gradients
    got = [t.grad for t in (q, k, v)]
    expected = torch.autograd.grad(M._math(q, k, v).square().sum(), (q, k, v))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)

    model = tiny(attn_backend="fa4").train()
    idx = torch.randint(0, 97, (2, 16))
    assert M.pick_attention_backend(model.config, "cpu", torch.float32) == "fa4"
    explained = torch._dynamo.explain(model)(idx, idx)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    eager = model(idx, idx)
    compiled = torch.compile(model)(idx, idx)
    torch.testing.assert_close(compiled, eager)
    calls.clear()
    compiled.backward()
    assert calls == ["backward"] * model.config.n_layers  # the compiled graph's backward calls the kernel


def count(**shape):
    with torch.device("meta"):
        return Llama(ModelConfig(**shape)).num_params()


def test_preset_parameter_counts():
    # Test-1-4000's 190M shape
    assert (
        190.4e6
        <= count(dim=768, n_layers=12, n_heads=12, hidden_dim=3072, vocab_size=50257, max_seq_len=2048)
        <= 190.6e6
    )
    # llama2.c's 15M: hidden 768 comes from the Llama rule with multiple_of=32
    assert count(dim=288, n_layers=6, n_heads=6, vocab_size=32000, tie_embeddings=True) == pytest.approx(
        15.2e6, rel=0.005
    )
    # seed 003's 24.5M
    assert count(
        dim=448,
        n_layers=7,
        n_heads=7,
        hidden_dim=1536,
        vocab_size=10000,
        tie_embeddings=True,
        max_seq_len=512,
    ) == pytest.approx(24.5e6, rel=0.005)


def test_hidden_dim_follows_the_llama_rule():
    assert ModelConfig(dim=288).hidden_dim == 768
    assert ModelConfig(dim=4096, n_heads=32, multiple_of=256).hidden_dim == 11008  # Llama 2 7B


def test_initialisation_scales_the_residual_projections():
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=256, n_layers=8, n_heads=4, vocab_size=1000))
    residual = 0.02 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert p.std().item() == pytest.approx(residual, rel=0.05), name
        elif p.dim() == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        else:
            assert torch.equal(p, torch.ones_like(p)), name


def test_tied_embeddings_share_one_tensor():
    model = tiny(tie_embeddings=True)
    assert model.lm_head.weight is model.embed_tokens.weight


def test_flops_per_token_is_the_counted_matrix_products_plus_attention_counted_by_hand():
    """PaLM's 6N + 12*L*H*Q*T, made another way: torch counts the matrix products of one training step (the
    loss's head included), and attention is counted by hand for this shape. They differ only by the norms' 320
    weights, which 6N counts and no product has (0.3%)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny().train()  # 2 layers, 4 heads of 16, context 32
    idx = torch.randint(0, 97, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx).backward()
    products = counter.get_flop_counts()["Global"][torch.ops.aten.mm] / idx.numel()
    # per token, layer and head: q.k over the 32 positions and the weighted sum of 32 values, 2 * 32 * 16
    # multiply-adds each forward, twice that backward: 3 * 2 * (2 * 32 * 16) = 6144; times 2 layers x 4 heads
    attention = 6144 * 2 * 4
    assert model.flops_per_token(32) == pytest.approx(products + attention, rel=0.003)


@pytest.mark.parametrize("chunk_rows", [7, 4096])
def test_chunked_loss_and_gradients_equal_full_cross_entropy(monkeypatch, chunk_rows):
    monkeypatch.setattr(M, "LOSS_CHUNK_ELEMENTS", chunk_rows * 97)  # 7 rows split the 2 x 12 rows unevenly
    model, reference = tiny(), tiny()
    idx = torch.randint(0, 97, (2, 12))
    targets = torch.randint(0, 97, (2, 12))
    targets[0, :4] = -1  # ignored positions
    loss = model(idx, targets)
    expected = F.cross_entropy(all_logits(reference, idx).flatten(0, 1), targets.flatten(), ignore_index=-1)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    loss.backward()
    expected.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_loss_needs_no_gradients():
    model = tiny()
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        loss = model(idx, idx)
    assert not loss.requires_grad and loss.item() == pytest.approx(model(idx, idx).item(), abs=1e-6)


@pytest.mark.parametrize(
    "shape, message",
    [
        (dict(dim=65), "must divide by n_heads"),
        (dict(n_kv_heads=3), "n_heads by n_kv_heads=3"),
        (dict(dropout=1.5), "dropout=1.5"),
        (dict(dim=36, n_heads=4, n_kv_heads=4), "must be even for RoPE"),
        (dict(n_layers=0), "n_layers=0"),
        (dict(attn_backend="flash"), "attn_backend='flash'"),
    ],
)
def test_impossible_shapes_are_refused_with_a_clear_message(shape, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"dim": 64, "n_heads": 4, **shape})


def test_the_training_forward_and_loss_compile_into_one_graph():
    model = tiny()
    idx = torch.randint(0, 97, (2, 16))
    assert M.pick_attention_backend(model.config, "cpu", torch.float32) == "sdpa"  # chosen before the trace
    explained = torch._dynamo.explain(model)(idx, idx)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
