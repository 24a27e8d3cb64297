import os

import pytest
import torch

import generate as G
import tokenizer
from generate import compile_for_decoding, generate, new_cache, prepare_for_decoding
from model import Llama, ModelConfig

GREEDY = dict(temperature=0, repetition_penalty=1.0)  # the model's own argmax at every step


def tiny(**overrides):
    torch.manual_seed(0)
    cfg = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, max_seq_len=32)
    return Llama(ModelConfig(**{**cfg, **overrides})).eval()


def all_logits(model, idx):
    return model.lm_head(model.hidden(idx)).float()


def test_greedy_generation_is_identical_with_and_without_the_cache_even_past_the_context():
    model = tiny()
    idx = torch.randint(0, 97, (2, 6))
    cached = generate(model, idx, 70, **GREEDY)  # 76 tokens: the 32-token window slides twice
    recomputed = generate(model, idx, 70, use_cache=False, **GREEDY)
    assert cached.shape == (2, 76)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :6], idx)


def test_past_the_context_generation_restarts_from_the_last_half_of_the_window():
    model = tiny()
    idx = torch.randint(0, 97, (1, 30))
    out = generate(model, idx, 4, **GREEDY)
    # token 32 still sees the full 32-token window; then the window restarts from its last 16 tokens
    assert out[0, 32].item() == all_logits(model, out[:, :32])[0, -1].argmax().item()
    assert out[0, 33].item() == all_logits(model, out[:, 17:33])[0, -1].argmax().item()


def test_the_decoding_layout_gives_the_same_tokens_and_logits():
    model = tiny(tie_embeddings=True)
    idx = torch.randint(0, 97, (2, 5))
    before, logits = generate(model, idx, 20, **GREEDY), model(idx)
    prepare_for_decoding(model)
    assert not model.lm_head.weight.is_contiguous()  # stored (in, out): MKL's fast layout for one row
    assert model.embed_tokens.weight.is_contiguous()
    torch.testing.assert_close(model(idx), logits, rtol=0, atol=1e-5)
    assert torch.equal(generate(model, idx, 20, **GREEDY), before)


def test_an_int8_matrix_is_its_rows_rounded_to_127_steps_of_their_largest_magnitude():
    weight = torch.randn(6, 40)
    weight[2] = 0.0  # a row of zeros stays zeros
    low = G.Int8Linear(weight)
    q, scale = low.weight[:, :40].float(), low.scales.float()[:, None]
    assert not low.weight[:, 40:].any()  # zero columns up to the kernel's multiple of 16
    assert low.weight.dtype == torch.int8 and low.scales.dtype == torch.bfloat16
    assert q.abs().amax(1).tolist() == [127.0, 127.0, 0.0, 127.0, 127.0, 127.0]
    assert ((weight - q * scale).abs() <= scale * 0.5 + 1e-7).all()  # each weight is its nearest step
    x = torch.randn(3, 5, 40)
    # the product of the bf16-rounded input with the dequantized matrix, rounded to bf16 at the end
    expected = (x.bfloat16().float() @ (q * scale).t()).bfloat16().float()
    torch.testing.assert_close(low(x), expected, rtol=2**-7, atol=1e-5)


def test_a_bf16_matrix_gives_autocasts_product():
    weight, x = torch.randn(6, 40), torch.randn(3, 40)
    expected = (x.bfloat16().float() @ weight.bfloat16().float().t()).bfloat16().float()
    torch.testing.assert_close(G.BF16Linear(weight)(x), expected, rtol=2**-7, atol=1e-5)


@pytest.mark.parametrize("quantize", ["bf16", "int8"])
def test_quantized_decoding_stays_close_to_fp32(quantize):
    """Every matrix is replaced (the head by int8 with 'int8'), the embedding is not, and reading fp32's
    greedy text the quantized model makes nearly the same choices."""
    model = prepare_for_decoding(tiny(dim=128, vocab_size=500, max_seq_len=128))
    low = prepare_for_decoding(tiny(dim=128, vocab_size=500, max_seq_len=128), quantize)
    assert isinstance(low.lm_head, G.Int8Linear if quantize == "int8" else G.BF16Linear)
    assert not any(isinstance(m, torch.nn.Linear) for m in low.modules())
    assert low.embed_tokens.weight.dtype == torch.float32
    idx = torch.randint(0, 500, (2, 8))
    text = generate(model, idx, 100, **GREEDY)
    logits, low_logits = all_logits(model, text), all_logits(low, text)
    assert (low_logits - logits).abs().max() < 0.05 * logits.abs().max()
    assert (low_logits.argmax(-1) == logits.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize(
    "quantize, device, message",
    [
        ("int4", "cpu", "--quantize='int4': use bf16, int8"),
        ("int8", "cuda", "--quantize=int8 is for decoding on the CPU"),
    ],
)
def test_quantize_choices_are_checked(quantize, device, message):
    with pytest.raises(ValueError, match=message):
        G.check_quantize(quantize, device)
    G.check_quantize("", device)
    G.check_quantize("int8", "cpu:0")


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = G.top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    logits = probs.log()
    assert G.top_p_filter(logits, 0.7).isfinite().tolist() == [[False, True, False, True]]
    assert G.top_p_filter(logits, 0.5).isfinite().tolist() == [[False, True, False, False]]
    assert G.top_p_filter(logits, 0.81).isfinite().sum().item() == 3
    assert G.top_p_filter(logits, 1.0).isfinite().all()


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])  # a nucleus of hundreds of tokens, of tens, of one
def test_top_p_keeps_the_most_likely_tokens_until_their_mass_reaches_p_over_a_large_vocabulary(scale):
    torch.manual_seed(0)
    logits = torch.randn(3, 5000) * scale
    probs = logits.softmax(-1)
    kept = G.top_p_filter(logits, 0.9).isfinite()
    for row in range(3):
        mass = probs[row][kept[row]].sum().item()
        smallest_kept = probs[row][kept[row]].min().item()
        assert mass >= 0.9 - 1e-6 and mass - smallest_kept < 0.9  # reaches p, and needs its last token to
        assert (probs[row][~kept[row]] <= smallest_kept).all()  # none left out is more likely than one kept


def test_repetition_penalty_follows_hf_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert G.apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_sampling_only_draws_tokens_the_filters_keep():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    seen = torch.zeros(4, 50, dtype=torch.bool)
    allowed = torch.topk(logits, 3).indices
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    for _ in range(50):
        token = G.sample_token(logits, seen, generators, 1.0, 3, 1.0, 1.0)
        assert (allowed == token).any(dim=1).all()
    assert torch.equal(
        G.sample_token(logits, seen, generators, 0, 0, 1.0, 1.0), logits.argmax(-1, keepdim=True)
    )


def test_the_seed_decides_the_sample_and_the_global_rng_does_not():
    model = tiny()
    idx = torch.randint(0, 97, (1, 4))
    settings = dict(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.1)
    torch.manual_seed(1)
    first = generate(model, idx, 20, seed=5, **settings)
    torch.manual_seed(2)  # another global state changes nothing
    assert torch.equal(generate(model, idx, 20, seed=5, **settings), first)
    assert not torch.equal(generate(model, idx, 20, seed=6, **settings), first)


def test_each_row_of_a_batch_gets_the_text_it_would_get_alone_with_its_seed():
    model = tiny()
    prompt = torch.randint(0, 97, (1, 4))
    settings = dict(temperature=1.0, top_k=0, top_p=0.95, repetition_penalty=1.1)
    batch = generate(model, prompt.repeat(4, 1), 40, seed=10, **settings)
    for i in range(4):
        assert torch.equal(batch[i : i + 1], generate(model, prompt, 40, seed=10 + i, **settings))


def test_each_sequence_stops_at_end_of_text():
    model = tiny()
    idx = torch.randint(0, 97, (2, 4))
    free = generate(model, idx, 12, **GREEDY)
    eos = free[0, 6].item()  # the third token sequence 0 generates
    assert eos not in free[1, 4:].tolist()  # so sequence 1 runs to max_new_tokens
    out = generate(model, idx, 12, eos_id=eos, **GREEDY)
    assert out[0, 6].item() == eos and (out[0, 6:] == eos).all()
    assert torch.equal(out[0, :7], free[0, :7])
    assert torch.equal(out[1], free[1])
    # when every sequence has finished, generation stops
    single = generate(model, idx[:1], 12, eos_id=eos, **GREEDY)
    assert single.shape[1] == 7


def test_a_prompt_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        generate(tiny(), torch.zeros(1, 33, dtype=torch.long), 1)


def test_the_cache_holds_every_layers_keys_and_values_for_the_whole_context():
    model = tiny(n_kv_heads=2)
    cache = new_cache(model, 3)
    assert len(cache) == 2 and all(k.shape == v.shape == (3, 2, 33, 16) for k, v in cache)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=1e-30), "repetition_penalty"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_settings_out_of_range_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        G.check_settings(**{**G.DEFAULTS, **settings})


def test_the_traced_decode_gives_the_eager_tokens():
    """What torch.compile captures of a cached decode (the in-place cache writes, the position that changes
    every step) gives the eager tokens; inductor's own kernels are checked on GPU, in test_cuda.py."""
    model = tiny()
    idx = torch.randint(0, 97, (2, 5))
    eager = generate(model, idx, 12, **GREEDY)
    assert torch.equal(generate(torch.compile(model, backend="aot_eager"), idx, 12, **GREEDY), eager)


@pytest.mark.parametrize("batch", [1, 2])
def test_the_static_step_gpus_capture_gives_the_eager_tokens_from_one_graph(batch):
    """The step CUDA graphs replay (a tensor position, the whole cache masked), traced on CPU: the eager
    tokens, across window restarts, and no recompiling as the position moves (each recompile would
    re-record the CUDA graph: seen on an H200 as one 240-token sample in three taking 3 s instead of 85 ms)."""
    model = tiny()
    idx = torch.randint(0, 97, (batch, 5))
    eager = generate(model, idx, 40, **GREEDY)
    torch._dynamo.reset()
    step = G.static_step(model, backend="aot_eager")
    generate(model, idx, 2, step=step, **GREEDY)  # the first call compiles
    with torch.compiler.set_stance("fail_on_recompile"):
        assert torch.equal(generate(model, idx, 40, step=step, **GREEDY), eager)


def test_a_cached_decode_step_that_cannot_be_loaded_is_named_and_sampling_goes_on_eagerly(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = prepare_for_decoding(tiny())
    path = G._package_path(model, 1)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"half a package")
    with pytest.raises(RuntimeError, match="cannot be loaded .*--compile=True builds it again"):
        compile_for_decoding(model, 1, build=False)
    assert G.decode_step(model, 1) is None
    assert "cannot be loaded" in capsys.readouterr().err


@pytest.mark.slow
def test_the_compiled_decode_step_gives_the_eager_text_and_is_built_once_per_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = prepare_for_decoding(tiny())
    assert compile_for_decoding(model, 2, build=False) is None  # nothing built yet
    step = compile_for_decoding(model, 2)
    idx = torch.randint(0, 97, (2, 6))
    sampled = dict(temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=1.1, seed=3)
    for settings in (GREEDY, sampled):  # 70 tokens: the 32-token window restarts (an eager prefill) twice
        assert torch.equal(
            generate(model, idx, 70, step=step, **settings), generate(model, idx, 70, **settings)
        )
    assert compile_for_decoding(model, 2, build=False) is not None  # cached: later runs load it
    assert compile_for_decoding(model, 1, build=False) is None  # another batch size is another build
    other = prepare_for_decoding(tiny())
    other.norm.weight.data[0] += 1e-3
    assert compile_for_decoding(other, 2, build=False) is None  # other weights, another build


@pytest.mark.slow
def test_the_compiled_int8_step_gives_the_eager_int8_text(tmp_path, monkeypatch):
    """inductor's own int8 kernel (not the eager one) reads the quantized matrices: the same greedy text."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = prepare_for_decoding(tiny(vocab_size=500), "int8")
    idx = torch.randint(0, 500, (2, 6))  # two rows: the kernel's blocks over rows, not one row alone
    assert torch.equal(
        generate(model, idx, 40, step=compile_for_decoding(model, 2), **GREEDY),
        generate(model, idx, 40, **GREEDY),
    )


def test_a_prompt_is_preceded_by_end_of_text_and_cropped_to_leave_room_for_a_token():
    enc = tokenizer.gpt2_encoding()
    ids, warning = G.encode_prompt(enc, "Once upon a time", 32)
    assert ids == [enc.eot_token] + enc.encode_ordinary("Once upon a time") and warning is None
    long = " ".join(["word"] * 40)
    ids, warning = G.encode_prompt(enc, long, 32)
    assert ids == ([enc.eot_token] + enc.encode_ordinary(long))[-31:] and "kept its last 31" in warning
