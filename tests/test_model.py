import math

import pytest
import torch

import model as M
from model import Llama, ModelConfig


def tiny(**overrides):
    torch.manual_seed(0)
    cfg = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, max_seq_len=32)
    return Llama(ModelConfig(**{**cfg, **overrides})).eval()


def all_logits(model, idx):
    """Logits at every position (a forward with targets computes them all)."""
    return model(idx, targets=torch.zeros_like(idx))[0]


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


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_prefill_and_decode_logits_equal_the_full_forward(n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    idx = torch.randint(0, 97, (3, 24))
    full = all_logits(model, idx)
    model.setup_cache(3)
    logits, _ = model(idx[:, :10], start_pos=0)
    torch.testing.assert_close(logits[:, -1], full[:, 9], rtol=0, atol=1e-5)
    for t in range(10, 24):
        logits, _ = model(idx[:, t:t + 1], start_pos=t)
        torch.testing.assert_close(logits[:, -1], full[:, t], rtol=0, atol=1e-5)
    model.clear_cache()


def test_greedy_generation_is_identical_with_and_without_the_cache_even_past_the_context():
    model = tiny()
    idx = torch.randint(0, 97, (2, 6))
    cached = model.generate(idx, 70, temperature=0)  # 76 tokens: the 32-token window slides twice
    recomputed = model.generate(idx, 70, temperature=0, use_cache=False)
    assert cached.shape == (2, 76)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :6], idx)


def test_past_the_context_generation_restarts_from_the_last_half_of_the_window():
    model = tiny()
    idx = torch.randint(0, 97, (1, 30))
    out = model.generate(idx, 4, temperature=0)
    # token 32 still sees the full 32-token window; then the window restarts from its last 16 tokens
    assert out[0, 32].item() == all_logits(model, out[:, :32])[0, -1].argmax().item()
    assert out[0, 33].item() == all_logits(model, out[:, 17:33])[0, -1].argmax().item()


def test_grouped_query_attention_with_repeated_kv_heads_equals_multi_head_attention():
    gqa, mha = tiny(n_kv_heads=2), tiny(n_kv_heads=4)
    state = gqa.state_dict()
    head_dim = 64 // 4
    for name, w in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):  # each kv head serves 2 query heads
            state[name] = w.view(2, head_dim, 64).repeat_interleave(2, dim=0).reshape(4 * head_dim, 64)
    mha.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(all_logits(gqa, idx), all_logits(mha, idx), rtol=0, atol=1e-5)


def test_rope_scores_depend_only_on_relative_offset():
    cos, sin = M.rope_tables(16, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        rq = M.apply_rope(q, cos[m:m + 1, None], sin[m:m + 1, None])
        rk = M.apply_rope(k, cos[n:n + 1, None], sin[n:n + 1, None])
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


def available_backends():
    q = torch.randn(1, 4, 2, 8)
    names = []
    for name, fn in M.ATTENTION_BACKENDS.items():
        try:
            fn(q, q, q)
            names.append(name)
        except Exception:
            pass
    return names


@pytest.mark.parametrize("name", available_backends())
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_every_available_backend_agrees_with_the_math_reference(name, kv_heads):
    q = torch.randn(2, 12, 4, 16)
    k, v = torch.randn(2, 12, kv_heads, 16), torch.randn(2, 12, kv_heads, 16)
    torch.testing.assert_close(M.causal_attention(q, k, v, name), M._math(q, k, v), rtol=1e-5, atol=1e-5)


def test_sdpa_runs_on_cpu_when_no_flash_package_is_installed(capsys, monkeypatch):
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


def test_an_explicit_backend_that_cannot_run_raises():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(Exception):
        M.causal_attention(q, q, q, "fa4")  # needs CUDA and flash-attn-4


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = M.top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    logits = probs.log()
    assert M.top_p_filter(logits, 0.7).isfinite().tolist() == [[False, True, False, True]]
    assert M.top_p_filter(logits, 0.5).isfinite().tolist() == [[False, True, False, False]]
    assert M.top_p_filter(logits, 0.81).isfinite().sum().item() == 3
    assert M.top_p_filter(logits, 1.0).isfinite().all()


def test_repetition_penalty_follows_hf_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert M.apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_sampling_only_draws_tokens_the_filters_keep():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    seen = torch.zeros(4, 50, dtype=torch.bool)
    allowed = torch.topk(logits, 3).indices
    for _ in range(50):
        token = M.sample_token(logits, seen, 1.0, 3, 1.0, 1.0)
        assert (allowed == token).any(dim=1).all()
    assert torch.equal(M.sample_token(logits, seen, 0, 0, 1.0, 1.0), logits.argmax(-1, keepdim=True))


def test_same_seed_gives_the_same_sample():
    model = tiny()
    idx = torch.randint(0, 97, (2, 4))
    samples = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        samples.append(model.generate(idx, 20, temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.1))
    assert torch.equal(samples[0], samples[1])
    assert not torch.equal(samples[0], samples[2])


def test_each_sequence_stops_at_end_of_text():
    model = tiny()
    idx = torch.randint(0, 97, (2, 4))
    free = model.generate(idx, 12, temperature=0)
    eos = free[0, 6].item()  # the third token sequence 0 generates
    out = model.generate(idx, 12, temperature=0, eos_id=eos)
    assert out[0, 6].item() == eos and (out[0, 6:] == eos).all()
    assert torch.equal(out[0, :7], free[0, :7])
    if eos not in free[1, 4:].tolist():  # sequence 1 never produces it: it runs to max_new_tokens
        assert torch.equal(out[1], free[1])
    # when every sequence has finished, generation stops
    single = model.generate(idx[:1], 12, temperature=0, eos_id=eos)
    assert single.shape[1] == 7


def test_a_prompt_longer_than_the_context_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model.generate(torch.zeros(1, 33, dtype=torch.long), 1)


def count(**shape):
    with torch.device("meta"):
        return Llama(ModelConfig(**shape)).num_params()


def test_preset_parameter_counts():
    # the seeds' 190M Test-1-3000/4000 shape
    assert 190.4e6 <= count(dim=768, n_layers=12, n_heads=12, hidden_dim=3072, vocab_size=50257,
                            max_seq_len=2048) <= 190.6e6
    # llama2.c's 15M: hidden 768 comes from the Llama rule with multiple_of=32
    assert count(dim=288, n_layers=6, n_heads=6, vocab_size=32000, tie_embeddings=True) == pytest.approx(15.2e6, rel=0.005)
    # seed 003's 24.5M
    assert count(dim=448, n_layers=7, n_heads=7, hidden_dim=1536, vocab_size=10000, tie_embeddings=True,
                 max_seq_len=512) == pytest.approx(24.5e6, rel=0.005)


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


def test_weight_decay_applies_to_matrices_only():
    model = tiny()
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_mfu_uses_the_gpus_own_peak(monkeypatch):
    model = tiny()
    assert model.estimate_mfu(32, 1e5, "cpu") is None
    for name, peak in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA GeForce RTX 4090", 165e12)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert M.peak_flops("cuda") == peak, name
        assert model.estimate_mfu(32, 1e5, "cuda") == pytest.approx(model.flops_per_token(32) * 1e5 / peak)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU")
    assert model.estimate_mfu(32, 1e5, "cuda") is None


def test_flops_per_token_is_palms_formula():
    model = tiny()
    n = model.num_params() - 97 * 64  # untied: the embedding lookup costs no FLOPs
    assert model.flops_per_token(32) == 6 * n + 12 * 2 * 4 * 16 * 32


def test_loss_ignores_minus_one_targets():
    model = tiny()
    idx = torch.randint(0, 97, (1, 8))
    targets = idx.clone()
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, 4:], targets[0, 4:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
