import os

import pytest
import torch
from conftest import all_logits, tiny

import fastdecode as F
from fastdecode import compile_for_decoding, prepare_for_decoding
from generate import generate

GREEDY = dict(temperature=0, repetition_penalty=1.0)  # the model's own argmax at every step


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
    low = F.Int8Linear(weight)
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
    torch.testing.assert_close(F.BF16Linear(weight)(x), expected, rtol=2**-7, atol=1e-5)


@pytest.mark.parametrize("quantize", ["bf16", "int8"])
def test_quantized_decoding_stays_close_to_fp32(quantize):
    """Every matrix is replaced (the head by int8 with 'int8'), the embedding is not, and reading fp32's
    greedy text the quantized model makes nearly the same choices."""
    model = prepare_for_decoding(tiny(dim=128, vocab_size=500, max_seq_len=128))
    low = prepare_for_decoding(tiny(dim=128, vocab_size=500, max_seq_len=128), quantize)
    assert isinstance(low.lm_head, F.Int8Linear if quantize == "int8" else F.BF16Linear)
    assert not any(isinstance(m, torch.nn.Linear) for m in low.modules())
    assert low.embed_tokens.weight.dtype == torch.float32
    idx = torch.randint(0, 500, (2, 8))
    text = generate(model, idx, 100, **GREEDY)
    logits, low_logits = all_logits(model, text), all_logits(low, text)
    assert (low_logits - logits).abs().max() < 0.05 * logits.abs().max()
    assert (low_logits.argmax(-1) == logits.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("batch", [1, 2])
def test_the_static_step_gpus_capture_gives_the_eager_tokens_from_one_graph(batch):
    """The step CUDA graphs replay (a tensor position, the whole cache masked), traced on CPU: the eager
    tokens, across window restarts, and no recompiling as the position moves (each recompile would re-record
    the CUDA graph: seen on an H200 as one 240-token sample in three taking 3 s instead of 85 ms)."""
    model = tiny()
    idx = torch.randint(0, 97, (batch, 5))
    eager = generate(model, idx, 40, **GREEDY)
    torch._dynamo.reset()
    step = F.static_step(model, backend="aot_eager")
    generate(model, idx, 2, step=step, **GREEDY)  # the first call compiles
    with torch.compiler.set_stance("fail_on_recompile"):
        assert torch.equal(generate(model, idx, 40, step=step, **GREEDY), eager)


def test_a_cached_decode_step_that_cannot_be_loaded_is_named_and_sampling_goes_on_eagerly(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = prepare_for_decoding(tiny())
    path = F.package_path(model, 1)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"half a package")
    with pytest.raises(RuntimeError, match="cannot be loaded .*--compile=True rebuilds it"):
        compile_for_decoding(model, 1, build=False)
    assert F.decode_step(model, 1) is None
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
