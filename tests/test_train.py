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

from checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from conftest import ROOT, assert_clean_error, make_stories, run_script, write_txt

TINY = ["--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--block_size=32", "--batch_size=4",
        "--gradient_accumulation_steps=2", "--eval_iters=2", "--log_interval=1", "--compile=False",
        "--learning_rate=3e-3", "--warmup_iters=5", "--min_lr=3e-4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small prepared corpus with a 300-id BPE vocabulary."""
    tmp = tmp_path_factory.mktemp("data")
    result = run_script("prepare.py", f"--input={write_txt(tmp / 'stories.txt', make_stories(300))}",
                        "--vocab_size=300", f"--out_dir={tmp / 'data'}", "--num_proc=1")
    assert result.returncode == 0, result.stderr
    return tmp / "data"


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


def test_loss_falls_and_logs_every_field(data_dir, tmp_path):
    train(data_dir, tmp_path, "--max_iters=60", "--eval_interval=30")
    vals = val_losses(tmp_path)
    assert [i for i, _ in vals] == [0, 30, 60]
    assert vals[-1][1] < vals[0][1] - 1.0
    train_record = next(r for r in records(tmp_path) if "loss" in r)
    assert set(train_record) == {"iter", "loss", "lr", "ms", "tok_per_s", "mfu"}
    assert train_record["mfu"] is None  # CPU
    eval_record = records(tmp_path)[-1]
    assert set(eval_record) == {"iter", "val_loss", "val_ppl", "val_bpb"}
    meta = json.load(open(data_dir / "meta.json"))
    bytes_per_token = meta["val"]["bytes"] / meta["val"]["tokens"]
    assert eval_record["val_bpb"] == pytest.approx(eval_record["val_loss"] / np.log(2) / bytes_per_token)
    assert eval_record["val_ppl"] == pytest.approx(np.exp(eval_record["val_loss"]))


def test_one_batch_can_be_overfit(data_dir, tmp_path):
    # a train split of exactly one window: every batch is the same 32 tokens
    overfit = tmp_path / "data"
    shutil.copytree(data_dir, overfit)
    np.fromfile(data_dir / "train.bin", dtype=np.uint16)[:33].tofile(overfit / "train.bin")
    train(overfit, tmp_path / "out", "--max_iters=150", "--eval_interval=1000", "--learning_rate=1e-2")
    assert train_losses(tmp_path / "out")[150] < 0.05


def test_checkpoint_holds_everything_and_loads_without_code(data_dir, tmp_path):
    train(data_dir, tmp_path, "--max_iters=4", "--eval_interval=2")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["iter_num"] == 4
    assert {"model_args", "model", "optimizer", "scaler", "best_val_loss", "config", "tokenizer", "rng"} <= set(ckpt)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert ckpt["tokenizer"] == json.load(open(data_dir / "meta.json"))["tokenizer"]
    assert ckpt["config"]["dim"] == 32 and ckpt["model_args"]["vocab_size"] == 300
    assert ckpt["best_val_loss"] == min(v for _, v in val_losses(tmp_path))


def test_sigterm_then_resume_gives_bit_identical_losses(data_dir, tmp_path):
    args = ["--max_iters=300", "--eval_interval=100", "--dropout=0.1"]
    train(data_dir, tmp_path / "full", *args)
    out = tmp_path / "resumed"
    cmd = [sys.executable, "train.py", f"--data_dir={data_dir}", f"--out_dir={out}", *TINY, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= 20):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stdout
    stopped_at = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    assert 15 <= stopped_at < 300
    train(data_dir, out, *args, "--init_from=resume")
    full, resumed = train_losses(tmp_path / "full"), train_losses(out)
    assert len(resumed) == 300
    assert all(resumed[i] == full[i] for i in range(1, 301)), "losses after the resume point differ"
    assert val_losses(out)[-1] == val_losses(tmp_path / "full")[-1]


def test_eval_is_deterministic(data_dir, tmp_path):
    train(data_dir, tmp_path, "--max_iters=10", "--eval_interval=5")
    last = val_losses(tmp_path)[-1]
    train(data_dir, tmp_path, "--max_iters=10", "--eval_interval=5", "--init_from=resume")  # evaluates again
    assert val_losses(tmp_path)[-1] == last and val_losses(tmp_path)[-2] == last


def test_checkpoint_survives_a_crash_during_write(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint({"iter_num": 1, "w": torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"iter_num": 2, "w": torch.zeros(3)}, path)
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
    result = train(data_dir, tmp_path, "--max_iters=50", "--eval_interval=1000", "--learning_rate=1e9",
                   "--warmup_iters=0", "--grad_clip=0.0", "--lr_schedule=constant", check=False)
    assert_clean_error(result, "non-finite")
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["iter_num"] == 0
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_rank_with_double_accumulation(data_dir, tmp_path):
    common = [f"--data_dir={data_dir}", *TINY, "--max_iters=8", "--eval_interval=4", "--gradient_accumulation_steps=4"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "tests/ddp_worker.py"]
    two = subprocess.run(torchrun + common + [f"--out_dir={tmp_path / 'two'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    rank0, rank1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    one = subprocess.run([sys.executable, "tests/ddp_worker.py"] + common + [f"--out_dir={tmp_path / 'one'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    single = torch.load(tmp_path / "one" / "rank0.pt")
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-5)
    for (i, a), (j, b) in zip(val_losses(tmp_path / "two"), val_losses(tmp_path / "one")):
        assert i == j and a == pytest.approx(b, rel=1e-5)
    assert list(train_losses(tmp_path / "two")) == list(range(1, 9))


def bad_train_input(case, data_dir, tmp_path):
    if case == "missing data_dir":
        return [f"--data_dir={tmp_path / 'nope'}"], "has no meta.json"
    if case == "empty data_dir":
        (tmp_path / "empty").mkdir()
        return [f"--data_dir={tmp_path / 'empty'}"], "run prepare.py first"
    if case == "block_size larger than data":
        return ["--block_size=100000", "--max_seq_len=100000"], "larger than train.bin"
    if case == "block_size larger than context":
        return ["--block_size=64", "--max_seq_len=32"], "larger than the model's context"
    if case == "accumulation not divisible":
        return ["--gradient_accumulation_steps=3", "ENV:RANK=0,WORLD_SIZE=2"], "divisible by the 2 ranks"
    if case == "zero batch":
        return ["--batch_size=0"], "at least 1"
    if case == "resume with no checkpoint":
        return ["--init_from=resume", f"--out_dir={tmp_path / 'none'}"], "no checkpoint"
    if case == "corrupt checkpoint":
        (tmp_path / "corrupt").mkdir()
        (tmp_path / "corrupt" / "ckpt.pt").write_bytes(b"PK\x03\x04 not really")
        return ["--init_from=resume", f"--out_dir={tmp_path / 'corrupt'}"], "not a readable checkpoint"
    if case == "vocabulary mismatch":
        other = tmp_path / "other"
        run_script("prepare.py", f"--input={write_txt(tmp_path / 's.txt', make_stories(100))}", "--vocab_size=280",
                   f"--out_dir={other}", "--num_proc=1")
        train(data_dir, tmp_path / "v", "--max_iters=1")
        return ["--init_from=resume", f"--data_dir={other}", f"--out_dir={tmp_path / 'v'}"], "vocabulary mismatch"
    if case == "unknown init_from":
        return ["--init_from=gpt2"], "--init_from=gpt2"


@pytest.mark.parametrize("case", ["missing data_dir", "empty data_dir", "block_size larger than data",
                                  "block_size larger than context", "accumulation not divisible", "zero batch",
                                  "resume with no checkpoint", "corrupt checkpoint", "vocabulary mismatch",
                                  "unknown init_from"])
def test_bad_input_fails_with_one_line(case, data_dir, tmp_path):
    args, message = bad_train_input(case, data_dir, tmp_path)
    env = dict(os.environ)
    for arg in [a for a in args if a.startswith("ENV:")]:
        env.update(kv.split("=") for kv in arg[4:].split(","))
        args.remove(arg)
    base = [sys.executable, "train.py", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", *TINY]
    result = subprocess.run(base + args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert_clean_error(result, message)
