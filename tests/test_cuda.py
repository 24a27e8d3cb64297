"""The GPU paths, checked wherever a CUDA device is: skipped on machines without one (such as CI)."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny

import model as M
from generate import new_cache

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_model(**overrides):
    """conftest's tiny model, larger (dim 128, 512 ids, context 64), on the GPU and in train mode."""
    return tiny(**{"dim": 128, "vocab_size": 512, "max_seq_len": 64, **overrides}).cuda().train()


def batch(model, B=4, T=64):
    g = torch.Generator(device="cuda").manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (B, T), device="cuda", generator=g)


def test_a_bf16_autocast_train_step_matches_fp32():
    model = gpu_model()
    idx = batch(model)
    loss32 = model(idx, idx)
    loss32.backward()
    grads32 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss16 = model(idx, idx)
    loss16.backward()
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    for (name, p), g32 in zip(model.named_parameters(), grads32):
        cosine = torch.nn.functional.cosine_similarity(p.grad.flatten().float(), g32.flatten(), dim=0)
        assert cosine > 0.98, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_every_installed_attention_backend_agrees_with_the_math_reference(dtype, kv_heads):
    q = torch.randn(2, 128, 8, 64, device="cuda", dtype=dtype)
    k, v = (torch.randn(2, 128, kv_heads, 64, device="cuda", dtype=dtype) for _ in range(2))
    reference = M._math(q.float(), k.float(), v.float())
    ran = []
    for name, fn in M.ATTENTION_BACKENDS.items():
        try:
            out = fn(q, k, v)
        except (ImportError, RuntimeError, TypeError, ValueError, NotImplementedError):
            continue  # not installed, or not for this GPU
        torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2, msg=name)
        ran.append(name)
    assert "sdpa" in ran and "math" in ran


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_every_installed_attention_backend_has_the_gradients_of_the_math_reference(kv_heads):
    q = torch.randn(2, 128, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (
        torch.randn(2, 128, kv_heads, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(2)
    )
    dout = torch.randn_like(q)
    reference = torch.autograd.grad(M._math(q.float(), k.float(), v.float()), (q, k, v), dout.float())
    ran = []
    for name, fn in M.ATTENTION_BACKENDS.items():
        try:
            grads = torch.autograd.grad(fn(q, k, v), (q, k, v), dout)
        except (ImportError, RuntimeError, TypeError, ValueError, NotImplementedError):
            continue  # not installed, or not for this GPU
        for got, expected, which in zip(grads, reference, "qkv"):  # bf16 operands: about 1e-3 to 1e-2
            error = ((got.float() - expected).norm() / expected.norm()).item()
            assert error < 2e-2, f"{name} d{which}: relative error {error:.2e}"
        ran.append(name)
    assert "sdpa" in ran


def test_compiled_and_eager_losses_agree():
    model = gpu_model()
    idx = batch(model)
    M.pick_attention_backend(model.config, "cuda", torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(idx, idx)
        compiled = torch.compile(model)(idx, idx)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-2)


def test_cached_generation_in_bf16_equals_the_full_forward():
    model = gpu_model().to(torch.bfloat16).eval()
    idx = batch(model, B=2, T=40)
    with torch.no_grad():
        full = model.lm_head(model.hidden(idx)).float()
        cache, pos = new_cache(model, 2), 0
        for size in (16, 1, 1, 7, 15):
            step = model.lm_head(model.hidden(idx[:, pos : pos + size], cache, pos)).float()
            torch.testing.assert_close(step, full[:, pos : pos + size], rtol=5e-2, atol=5e-2)
            pos += size


def test_a_training_step_never_waits_for_the_gpu():
    """Forward, loss, backward, clipping and the fused AdamW step queue work without a host sync."""
    model = gpu_model()
    idx = batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    M.pick_attention_backend(model.config, "cuda", torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(idx, idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


TINY = [
    "--dim=64",
    "--n_layers=2",
    "--n_heads=4",
    "--block_size=32",
    "--batch_size=4",
    "--eval_iters=2",
    "--log_interval=1",
    "--max_iters=6",
    "--eval_interval=3",
    "--dtype=float32",
]


def test_train_py_runs_on_the_gpu_with_compile(data_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"--data_dir={data_dir}",
            f"--out_dir={tmp_path}",
            *TINY,
            "--compile=True",
            "--dtype=bfloat16",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "iter 6: val loss" in result.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_over_nccl_equals_gradient_accumulation(data_dir, tmp_path):
    common = [f"--data_dir={data_dir}", *TINY, "--gradient_accumulation_steps=4", "--compile=False"]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "tests/ddp_worker.py",
            *common,
            f"--out_dir={tmp_path / 'two'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr
    one = subprocess.run(
        [sys.executable, "tests/ddp_worker.py", *common, f"--out_dir={tmp_path / 'one'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert one.returncode == 0, one.stderr
    rank0, single = (torch.load(tmp_path / d / "rank0.pt") for d in ("two", "one"))
    for k in single:
        # Muon orthogonalises in bfloat16, which carries the gradient sums' rounding into the weights at
        # bf16's
        # precision, as on the CPU (test_train.py)
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-2, atol=2e-3)


def test_decoding_under_cuda_graphs_gives_the_eager_tokens():
    from fastdecode import compile_for_decoding
    from generate import generate

    model = gpu_model().eval()
    idx = batch(model, B=2, T=8)
    greedy = dict(temperature=0, repetition_penalty=1.0)
    eager = generate(model, idx, 24, **greedy)
    step = compile_for_decoding(model, 2)
    assert torch.equal(generate(model, idx, 24, step=step, **greedy), eager)
    assert torch.equal(generate(model, idx, 24, step=step, **greedy), eager)  # a fresh cache: replayed again
