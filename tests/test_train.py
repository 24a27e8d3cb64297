import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error, run_in_process, run_script

from checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint

TINY = [
    "--dim=32",
    "--n_layers=2",
    "--n_heads=4",
    "--n_kv_heads=2",
    "--block_size=32",
    "--batch_size=4",
    "--gradient_accumulation_steps=2",
    "--eval_iters=2",
    "--log_interval=1",
    "--compile=False",
    "--learning_rate=3e-3",
    "--warmup_iters=5",
    "--min_lr=3e-4",
]


def train(data_dir, out_dir, *args, check=True):
    result = run_script("train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *TINY, *args)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def records(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


def train_losses(out_dir):
    return {r["iter"]: r["loss"] for r in records(out_dir) if "loss" in r}


def val_losses(out_dir):
    return [(r["iter"], r["val_loss"]) for r in records(out_dir) if "val_loss" in r]


FINISHED = ["--max_iters=8", "--eval_interval=4"]


@pytest.fixture(scope="module")
def finished_run(data_dir):
    """A finished tiny run (evals at 0, 4 and 8), shared by the tests that read it or copy it."""
    out = data_dir.parent / "run"
    train(data_dir, out, *FINISHED)
    return out


SHORT = ["--max_iters=60", "--eval_interval=30"]


@pytest.fixture(scope="module")
def short_run(data_dir):
    """60 iterations of train.py's default recipe (evals at 0, 30 and 60)."""
    out = data_dir.parent / "short"
    train(data_dir, out, *SHORT)
    return out


def test_loss_falls_and_logs_every_field(data_dir, short_run):
    vals = val_losses(short_run)
    assert [i for i, _ in vals] == [0, 30, 60]
    assert vals[-1][1] < vals[0][1] - 1.0
    train_record = next(r for r in records(short_run) if "loss" in r)
    assert set(train_record) == {"iter", "loss", "lr", "ms", "tok_per_s", "mfu"}
    assert train_record["mfu"] is None  # CPU
    eval_record = records(short_run)[-1]
    assert set(eval_record) == {"iter", "val_loss", "val_ppl", "val_bpb"}
    meta = json.load(open(data_dir / "meta.json"))
    bytes_per_token = meta["val"]["bytes"] / meta["val"]["tokens"]
    assert eval_record["val_bpb"] == pytest.approx(eval_record["val_loss"] / np.log(2) / bytes_per_token)
    assert eval_record["val_ppl"] == pytest.approx(np.exp(eval_record["val_loss"]))


def test_the_default_recipe_beats_adamw_on_the_same_budget(data_dir, short_run, tmp_path):
    # the baseline preset sets the whole recipe, so TINY's schedule is given again after it
    train(
        data_dir,
        tmp_path,
        "config/train_baseline_adamw.py",
        "--learning_rate=3e-3",
        "--warmup_iters=5",
        "--min_lr=3e-4",
        *SHORT,
    )
    default, adamw = (torch.load(run / "ckpt.pt", weights_only=True) for run in (short_run, tmp_path))
    assert (default["config"]["optimizer"], adamw["config"]["optimizer"]) == ("muon", "adamw")
    assert default["val_loss"] < adamw["val_loss"] - 0.3  # measured: 2.80 against 3.83 nats


def test_one_batch_can_be_overfit(data_dir, tmp_path):
    # a train split of exactly one window: every batch is the same 32 tokens
    overfit = tmp_path / "data"
    shutil.copytree(data_dir, overfit)
    np.fromfile(data_dir / "train.bin", dtype=np.uint16)[:33].tofile(overfit / "train.bin")
    train(overfit, tmp_path / "out", "--max_iters=150", "--eval_interval=1000", "--learning_rate=1e-2")
    assert train_losses(tmp_path / "out")[150] < 0.05


def test_checkpoint_holds_everything_and_loads_without_code(finished_run):
    ckpt = torch.load(finished_run / "ckpt.pt", weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["iter_num"] == 8
    assert {
        "model_args",
        "model",
        "optimizer",
        "scaler",
        "best_val_loss",
        "config",
        "tokenizer",
        "rng",
    } <= set(ckpt)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert ckpt["tokenizer"] == json.load(open(finished_run.parent / "data" / "meta.json"))["tokenizer"]
    assert ckpt["config"]["dim"] == 32 and ckpt["model_args"]["vocab_size"] == 300
    assert ckpt["best_val_loss"] == min(v for _, v in val_losses(finished_run))


def test_best_checkpoint_holds_the_weights_of_the_lowest_val_loss_and_no_optimizer(finished_run):
    best, latest = (load_checkpoint(str(finished_run / name)) for name in ("best.pt", "ckpt.pt"))
    lowest = min(val_losses(finished_run), key=lambda pair: pair[1])
    assert best["iter_num"] == lowest[0] and best["val_loss"] == lowest[1] and "val_bpb" in best
    assert (
        "optimizer" not in best
        and os.path.getsize(finished_run / "best.pt") < os.path.getsize(finished_run / "ckpt.pt") / 2
    )


@pytest.mark.slow
def test_sigterm_then_resume_gives_bit_identical_losses_and_a_clean_log(data_dir, tmp_path):
    args = ["--max_iters=120", "--eval_interval=40", "--dropout=0.1"]
    train(data_dir, tmp_path / "full", *args)
    config = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)["config"]
    assert (config["optimizer"], config["lr_schedule"]) == (
        "muon",
        "wsd",
    )  # the default recipe resumes exactly
    out = tmp_path / "resumed"
    cmd = [sys.executable, "train.py", f"--data_dir={data_dir}", f"--out_dir={out}", *TINY, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= 50):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stdout
    stopped_at = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    assert 40 < stopped_at < 120
    train(data_dir, out, *args, "--init_from=resume")
    full, resumed = train_losses(tmp_path / "full"), train_losses(out)
    assert len(resumed) == 120
    assert all(resumed[i] == full[i] for i in range(1, 121)), "losses after the resume point differ"
    assert val_losses(out) == val_losses(tmp_path / "full")  # each eval once, with the same figures
    assert [r["iter"] for r in records(out)] == [r["iter"] for r in records(tmp_path / "full")]
    for name in ("best.pt", "ckpt.pt"):
        a, b = (load_checkpoint(str(run / name)) for run in (out, tmp_path / "full"))
        assert a["iter_num"] == b["iter_num"] and all(
            torch.equal(a["model"][k], b["model"][k]) for k in a["model"]
        )


def test_eval_is_deterministic(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    last = val_losses(run)[-1]
    train(finished_run.parent / "data", run, *FINISHED, "--init_from=resume")  # evaluates iteration 8 again
    assert val_losses(run)[-1] == last and val_losses(run).count(last) == 1


def test_a_scratch_run_never_replaces_a_checkpoint_unless_told(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = (run / "ckpt.pt").read_bytes()
    result = run_in_process(
        "train.py", f"--data_dir={finished_run.parent / 'data'}", f"--out_dir={run}", *TINY
    )
    assert_clean_error(result, "already holds a checkpoint", "--init_from=resume", "--overwrite=True")
    assert (run / "ckpt.pt").read_bytes() == before
    train(finished_run.parent / "data", run, "--max_iters=2", "--eval_interval=2", "--overwrite=True")
    assert [r["iter"] for r in records(run)] == [0, 1, 2, 2]  # a new run starts a new log
    assert load_checkpoint(str(run / "ckpt.pt"))["iter_num"] == 2


def test_init_from_auto_resumes_when_a_checkpoint_exists(finished_run, tmp_path):
    run = tmp_path / "run"
    result = train(finished_run.parent / "data", run, *FINISHED, "--init_from=auto")  # nothing there: scratch
    assert "resuming" not in result.stdout
    result = train(finished_run.parent / "data", run, *FINISHED[:-2], "--max_iters=10", "--init_from=auto")
    assert "resuming at iteration 8" in result.stdout
    assert load_checkpoint(str(run / "ckpt.pt"))["iter_num"] == 10


def test_a_killed_run_leaves_no_temporary_checkpoint_at_the_next_start(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "ckpt.pt.tmp").write_bytes(b"half a checkpoint")
    train(finished_run.parent / "data", run, *FINISHED[:-2], "--max_iters=9", "--init_from=resume")
    assert not (run / "ckpt.pt.tmp").exists()


def test_a_loss_plot_is_drawn_without_any_plotting_package(finished_run):
    svg = (finished_run / "loss.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "val" in svg


def test_muon_holds_the_blocks_matrices_adamw_the_rest_and_lr_scale_and_momentum_warmup_apply(
    data_dir, tmp_path
):
    train(
        data_dir,
        tmp_path,
        "--optimizer=muon",
        "--max_iters=3",
        "--eval_interval=3",
        "--embedding_lr_scale=4",
        "--muon_momentum_warmup=4",
    )
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    adamw, muon = ckpt["optimizer"]
    blocks = {k: v.shape for k, v in ckpt["model"].items() if k.startswith("layers.") and v.dim() == 2}
    muon_shapes = sorted(tuple(s["momentum_buffer"].shape) for s in muon["state"].values())
    assert muon_shapes == sorted(tuple(s) for s in blocks.values()) and len(blocks) == 4 * 2
    adamw_params = sum(len(g["params"]) for g in adamw["param_groups"])
    assert adamw_params == len(ckpt["model"]) - len(blocks)  # the rest: embedding, untied head, norms
    (embedding,), (head,), _ = (g["params"] for g in adamw["param_groups"])
    # only the rows of tokens in the batch get a gradient in the embedding; every row does in the head
    assert (adamw["state"][embedding]["exp_avg"].abs().sum(1) == 0).any()
    assert (adamw["state"][head]["exp_avg"].abs().sum(1) > 0).all()
    lr = muon["param_groups"][0]["lr"]
    assert [g["lr"] for g in adamw["param_groups"]] == [pytest.approx(4 * lr), lr, lr]
    assert muon["param_groups"][0]["momentum"] == pytest.approx(
        0.85 + (0.95 - 0.85) * 2 / 4
    )  # step 2 of 4's warmup


def test_the_wsd_schedule_warms_up_holds_then_decays_linearly(data_dir, tmp_path):
    train(
        data_dir,
        tmp_path,
        "--lr_schedule=wsd",
        "--max_iters=20",
        "--warmup_iters=4",
        "--decay_fraction=0.5",
        "--learning_rate=1e-2",
        "--min_lr=1e-3",
        "--eval_interval=100",
    )
    lr = {r["iter"] - 1: r["lr"] for r in records(tmp_path) if "lr" in r}  # the lr that step used
    assert lr[0] == pytest.approx(1e-2 / 5) and lr[3] == pytest.approx(1e-2 * 4 / 5)  # linear warmup
    assert lr[4] == lr[9] == pytest.approx(1e-2)  # stable until the last half
    assert lr[10] == pytest.approx(1e-2) and lr[15] == pytest.approx(1e-2 - 9e-3 * 5 / 10)  # linear decay
    assert lr[19] == pytest.approx(1e-2 - 9e-3 * 9 / 10)


def test_checkpoint_survives_a_crash_during_write(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    minimal = {"model_args": {}, "tokenizer": {"kind": "gpt2"}}
    save_checkpoint({**minimal, "iter_num": 1, "model": {"w": torch.ones(3)}}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**minimal, "iter_num": 2, "model": {"w": torch.zeros(3)}}, path)
    assert load_checkpoint(path)["iter_num"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_corrupt_or_foreign_checkpoint_gives_a_message(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(str(path))
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(str(path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    result = train(
        data_dir,
        tmp_path,
        "--max_iters=50",
        "--eval_interval=1000",
        "--learning_rate=1e9",
        "--warmup_iters=0",
        "--grad_clip=0.0",
        "--lr_schedule=constant",
        check=False,
    )
    assert_clean_error(result, "non-finite")
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["iter_num"] == 0
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_rank_with_double_accumulation_and_resume_exactly(data_dir, tmp_path):
    common = [f"--data_dir={data_dir}", *TINY, "--eval_interval=4", "--gradient_accumulation_steps=4"]

    def torchrun(out, *args):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "tests/ddp_worker.py",
                *common,
                f"--out_dir={out}",
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]

    rank0, rank1 = torchrun(tmp_path / "two", "--max_iters=8")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert list(train_losses(tmp_path / "two")) == list(range(1, 9))
    # stopped at 4 and resumed on 2 ranks: bit-identical to the uninterrupted run, Muon's state included
    torchrun(tmp_path / "resumed", "--max_iters=4")
    resumed, _ = torchrun(tmp_path / "resumed", "--max_iters=8", "--init_from=resume")
    assert all(torch.equal(resumed[k], rank0[k]) for k in rank0)
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "two")
    one = subprocess.run(
        [sys.executable, "tests/ddp_worker.py", *common, "--max_iters=8", f"--out_dir={tmp_path / 'one'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    single = torch.load(tmp_path / "one" / "rank0.pt")
    # the gradient sums differ in order only, but Muon orthogonalises them in bfloat16, which carries that
    # rounding into the weights at bfloat16's precision: close, where a wrong batch or scale would be far off
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-2, atol=2e-3)
    for (i, a), (j, b) in zip(val_losses(tmp_path / "two"), val_losses(tmp_path / "one")):
        assert i == j and a == pytest.approx(b, rel=1e-3)


def bad_train_input(case, data_dir, finished_run, tmp_path, monkeypatch):
    """(arguments, the message the one error line must hold) for each kind of bad input."""
    resume = ["--init_from=resume", f"--out_dir={tmp_path / 'run'}"]
    if case in (
        "resume with another shape",
        "resume with another optimizer",
        "resume without optimizer",
        "empty checkpoint",
        "checkpoint without tokenizer",
    ):
        shutil.copytree(finished_run, tmp_path / "run")
    if case == "resume with another optimizer":
        return resume + ["--optimizer=adamw"], "optimizer state does not fit"
    if case == "resume with another shape":
        return resume + ["--dim=128"], "--dim=128 conflicts with"
    if case == "resume without optimizer":
        shutil.copy(tmp_path / "run" / "best.pt", tmp_path / "run" / "ckpt.pt")
        return resume, "holds no optimizer state"
    if case == "empty checkpoint":
        (tmp_path / "run" / "ckpt.pt").write_bytes(b"")
        return resume, "is empty (0 bytes)"
    if case == "checkpoint without tokenizer":
        ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
        del ckpt["tokenizer"]
        torch.save(ckpt, tmp_path / "run" / "ckpt.pt")
        return resume, "lacks 'tokenizer'"
    if case == "corrupt checkpoint":
        (tmp_path / "corrupt").mkdir()
        (tmp_path / "corrupt" / "ckpt.pt").write_bytes(b"PK\x03\x04 not really")
        return ["--init_from=resume", f"--out_dir={tmp_path / 'corrupt'}"], "not a readable checkpoint"
    if case == "vocabulary mismatch":
        other = tmp_path / "other"
        shutil.copytree(data_dir, other)
        meta = json.load(open(other / "meta.json"))
        meta["tokenizer"], meta["vocab_size"] = {"kind": "gpt2"}, 50257
        json.dump(meta, open(other / "meta.json", "w"))
        return [
            "--init_from=resume",
            f"--data_dir={other}",
            f"--out_dir={finished_run}",
        ], "vocabulary mismatch"
    if case == "truncated meta.json":
        broken = tmp_path / "broken"
        shutil.copytree(data_dir, broken)
        (broken / "meta.json").write_text((data_dir / "meta.json").read_text()[:50])
        return [f"--data_dir={broken}"], "meta.json is damaged"
    if case == "accumulation not divisible":
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "2")
        return ["--gradient_accumulation_steps=3"], "divisible by the 2 ranks"
    if case == "out_dir is a file":
        (tmp_path / "file").write_text("")
        return [f"--out_dir={tmp_path / 'file'}"], "is a file"
    if case == "out_dir cannot be created":
        (tmp_path / "file").write_text("")
        return [f"--out_dir={tmp_path / 'file' / 'run'}"], "cannot create"
    if case == "wandb missing":
        monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
        return ["--wandb_log=True"], "pip install wandb"
    return {
        "missing data_dir": ([f"--data_dir={tmp_path / 'nope'}"], "has no meta.json"),
        "block_size larger than data": (
            ["--block_size=100000", "--max_seq_len=100000"],
            "larger than train.bin",
        ),
        "block_size larger than context": (
            ["--block_size=64", "--max_seq_len=32"],
            "larger than the model's context",
        ),
        "zero batch": (["--batch_size=0"], "--batch_size=0 must be at least 1"),
        "zero eval_iters": (["--eval_iters=0"], "--eval_iters=0"),
        "zero eval_interval": (["--eval_interval=0"], "--eval_interval=0"),
        "zero log_interval": (["--log_interval=0"], "--log_interval=0"),
        "negative seed": (["--seed=-1"], "--seed=-1"),
        "resume with no checkpoint": (
            ["--init_from=resume", f"--out_dir={tmp_path / 'none'}"],
            "no checkpoint",
        ),
        "unknown init_from": (["--init_from=gpt2"], "--init_from=gpt2"),
        "unknown optimizer": (["--optimizer=sgd"], "--optimizer=sgd"),
        "unknown schedule": (["--lr_schedule=linear"], "--lr_schedule=linear"),
        "odd dim": (["--dim=65"], "dim=65 must divide"),
        "impossible kv heads": (["--n_kv_heads=3"], "n_kv_heads=3"),
        "dropout above 1": (["--dropout=1.5"], "dropout=1.5"),
        "device meta": (["--device=meta"], "--device=meta"),
        "float16 on cpu": (["--device=cpu", "--dtype=float16"], "float16"),
        "flash attention missing": (["--attn_backend=fa4"], "attention backend fa4 cannot run"),
        "cuda missing": (["--device=cuda"], "no CUDA"),
    }[case]


CASES = [
    "missing data_dir",
    "block_size larger than data",
    "block_size larger than context",
    "accumulation not divisible",
    "zero batch",
    "zero eval_iters",
    "zero eval_interval",
    "zero log_interval",
    "negative seed",
    "resume with no checkpoint",
    "corrupt checkpoint",
    "empty checkpoint",
    "checkpoint without tokenizer",
    "resume without optimizer",
    "resume with another shape",
    "resume with another optimizer",
    "vocabulary mismatch",
    "truncated meta.json",
    "unknown init_from",
    "unknown optimizer",
    "unknown schedule",
    "odd dim",
    "impossible kv heads",
    "dropout above 1",
    "device meta",
    "float16 on cpu",
    "flash attention missing",
    "out_dir is a file",
    "out_dir cannot be created",
    "wandb missing",
]


@pytest.mark.parametrize("case", CASES + ([] if torch.cuda.is_available() else ["cuda missing"]))
def test_bad_input_fails_with_one_line_and_changes_nothing(
    case, data_dir, finished_run, tmp_path, monkeypatch
):
    args, message = bad_train_input(case, data_dir, finished_run, tmp_path, monkeypatch)
    before = {name: (finished_run / name).read_bytes() for name in os.listdir(finished_run)}
    result = run_in_process(
        "train.py", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", *TINY, *args
    )
    assert_clean_error(result, message)
    assert {name: (finished_run / name).read_bytes() for name in os.listdir(finished_run)} == before
