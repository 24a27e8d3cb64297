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
from conftest import ROOT, assert_clean_error, run_in_process, run_script, write_txt

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
    assert set(train_record) == {"iter", "tokens", "loss", "lr", "ms", "tok_per_s", "mfu", "elapsed"}
    assert train_record["tokens"] == train_record["iter"] * 4 * 32 * 2  # batch x block x accumulation
    assert train_record["mfu"] is None  # CPU
    eval_record = records(short_run)[-1]
    assert set(eval_record) == {"iter", "tokens", "val_loss", "val_ppl", "val_bpb", "elapsed"}
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
    assert default["val_loss"] < adamw["val_loss"]


def test_one_batch_can_be_overfit(data_dir, tmp_path):
    # a train split of exactly one window: every batch is the same 32 tokens
    overfit = tmp_path / "data"
    shutil.copytree(data_dir, overfit)
    np.fromfile(data_dir / "train.bin", dtype=np.uint16)[:33].tofile(overfit / "train.bin")
    no_regularisation = ["--many_pass_weight_decay=0", "--many_pass_dropout=0"]  # 150 passes over it
    train(
        overfit,
        tmp_path / "out",
        "--max_iters=150",
        "--eval_interval=1000",
        "--learning_rate=1e-2",
        *no_regularisation,
    )
    assert train_losses(tmp_path / "out")[150] < 0.05


def test_many_planned_passes_raise_weight_decay_and_dropout_unless_a_preset_turns_that_off(
    data_dir, short_run, tmp_path
):
    train_tokens = (data_dir / "train.bin").stat().st_size // 2
    many = ["--batch_size=64", "--gradient_accumulation_steps=8", "--max_iters=5", "--eval_interval=5"]
    assert (
        5 * 64 * 32 * 8 >= 2 * train_tokens > 2 * 60 * 4 * 32 * 2
    )  # many passes here, under one in short_run
    result = train(data_dir, tmp_path / "many", *many)
    assert "passes over the data: weight_decay 0.3, dropout 0.1" in result.stdout
    regularised = torch.load(tmp_path / "many" / "ckpt.pt", weights_only=True)
    assert (regularised["config"]["weight_decay"], regularised["model_args"]["dropout"]) == (0.3, 0.1)
    plain = torch.load(short_run / "ckpt.pt", weights_only=True)
    assert (plain["config"]["weight_decay"], plain["model_args"]["dropout"]) == (0.1, 0.0)
    train(data_dir, tmp_path / "source", "config/train_baseline_adamw.py", *TINY, *many)
    source = torch.load(tmp_path / "source" / "ckpt.pt", weights_only=True)
    assert (source["config"]["weight_decay"], source["model_args"]["dropout"]) == (0.1, 0.0)


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
    import xml.etree.ElementTree as ET

    svg = ET.parse(finished_run / "loss.svg").getroot()
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert len(lines) == 2  # train loss and val bits per byte
    assert "train loss (nats/token)" in texts and "val bits per byte" in texts and "tokens seen" in texts
    assert len([t for t in texts if t.endswith("M")]) >= 4  # ticks on the token axes


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
        "--decay_fraction=0",  # a constant lr
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
    assert (
        tmp_path / "two" / "lock"
    ).read_text().strip() == f"PID {(tmp_path / 'two' / 'rank0.pid').read_text()}"
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


def copy_run(finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def edit_checkpoint(run, edit):
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, run / "ckpt.pt")


def copy_data(data_dir, tmp_path, edit):
    shutil.copytree(data_dir, tmp_path / "other")
    edit(tmp_path / "other")
    return tmp_path / "other"


def edit_meta(path, **changes):
    meta = json.load(open(path / "meta.json"))
    json.dump({**meta, **changes}, open(path / "meta.json", "w"))


RESUME = ["--init_from=resume", "--out_dir={tmp}/run"]
# (case, setup(data_dir, finished_run, tmp_path, monkeypatch) or None, arguments, what the error line says)
BAD_INPUT = [
    ("missing data_dir", None, ["--data_dir={tmp}/nope"], "has no meta.json"),
    (
        "block_size larger than data",
        None,
        ["--block_size=100000", "--max_seq_len=100000"],
        "larger than train.bin",
    ),
    (
        "block_size larger than context",
        None,
        ["--block_size=64", "--max_seq_len=32"],
        "larger than the model's context",
    ),
    (
        "accumulation not divisible",
        lambda d, f, t, m: (m.setenv("RANK", "0"), m.setenv("WORLD_SIZE", "2")),
        ["--gradient_accumulation_steps=3"],
        "must divide by the 2 ranks",
    ),
    ("zero batch", None, ["--batch_size=0"], "--batch_size=0 must be at least 1"),
    ("zero eval_iters", None, ["--eval_iters=0"], "--eval_iters=0"),
    ("more eval windows than val tokens", None, ["--eval_iters=100000"], "use a smaller --eval_iters"),
    (
        "loss.svg is a directory",
        lambda d, f, t, m: (copy_run(f, t) / "loss.svg").unlink() or (t / "run" / "loss.svg").mkdir(),
        RESUME,
        "loss.svg is not a file: move it away",
    ),
    ("zero eval_interval", None, ["--eval_interval=0"], "--eval_interval=0"),
    ("zero log_interval", None, ["--log_interval=0"], "--log_interval=0"),
    ("negative seed", None, ["--seed=-1"], "--seed=-1"),
    ("seed 2**64", None, ["--seed=18446744073709551616"], "must be in [0, 2**63)"),
    ("negative learning rate", None, ["--learning_rate=-0.01"], "--learning_rate=-0.01 must be above 0"),
    ("beta1 above 1", None, ["--beta1=1.5"], "--beta1=1.5 must be in [0, 1)"),
    (
        "nan lr in a config file",
        lambda d, f, t, m: (t / "nan.py").write_text("learning_rate = float('nan')\n"),
        ["{tmp}/nan.py"],
        "--learning_rate=nan must be above 0",
    ),
    ("rope_theta 0", None, ["--rope_theta=0"], "--rope_theta=0.0 must be above 1"),
    ("resume with no checkpoint", None, ["--init_from=resume", "--out_dir={tmp}/none"], "no checkpoint"),
    (
        "corrupt checkpoint",
        lambda d, f, t, m: copy_run(f, t).joinpath("ckpt.pt").write_bytes(b"PK\x03\x04 no"),
        RESUME,
        "not a readable checkpoint",
    ),
    (
        "empty checkpoint",
        lambda d, f, t, m: copy_run(f, t).joinpath("ckpt.pt").write_bytes(b""),
        RESUME,
        "is empty (0 bytes)",
    ),
    (
        "checkpoint without tokenizer",
        lambda d, f, t, m: edit_checkpoint(copy_run(f, t), lambda c: c.pop("tokenizer")),
        RESUME,
        "lacks 'tokenizer'",
    ),
    (
        "resume without optimizer",
        lambda d, f, t, m: shutil.copy(copy_run(f, t) / "best.pt", t / "run" / "ckpt.pt"),
        RESUME,
        "holds no optimizer state",
    ),
    (
        "resume with another shape",
        lambda d, f, t, m: copy_run(f, t),
        [*RESUME, "--dim=128"],
        "--dim=128 conflicts with",
    ),
    (
        "resume with another context",
        lambda d, f, t, m: copy_run(f, t),
        [*RESUME, "--max_seq_len=64"],
        "--max_seq_len=64 conflicts with",
    ),
    (
        "resume with another optimizer",
        lambda d, f, t, m: copy_run(f, t),
        [*RESUME, "--optimizer=adamw"],
        "optimizer state does not fit",
    ),
    (
        "resume after model.py changed",
        lambda d, f, t, m: edit_checkpoint(
            copy_run(f, t), lambda c: c["code"].update(model_py="0123456789ab")
        ),
        RESUME,
        "model.py changed since",
    ),
    (
        "vocabulary mismatch",
        lambda d, f, t, m: copy_data(
            d, t, lambda o: edit_meta(o, tokenizer={"kind": "gpt2"}, vocab_size=50257)
        ),
        ["--init_from=resume", "--data_dir={tmp}/other", "--out_dir={finished}"],
        "vocabulary mismatch",
    ),
    (
        "truncated meta.json",
        lambda d, f, t, m: copy_data(
            d, t, lambda o: (o / "meta.json").write_text((d / "meta.json").read_text()[:50])
        ),
        ["--data_dir={tmp}/other"],
        "meta.json is damaged",
    ),
    (
        "token ids beyond the vocabulary",
        lambda d, f, t, m: copy_data(d, t, lambda o: edit_meta(o, vocab_size=200)),
        ["--data_dir={tmp}/other"],
        "holds token id 299, but meta.json's vocab_size is 200",
    ),
    ("unknown init_from", None, ["--init_from=gpt2"], "--init_from=gpt2"),
    (
        "missing hf directory",
        None,
        ["--init_from=hf:{tmp}/nope"],
        "--init_from=hf:{tmp}/nope is not a directory",
    ),
    ("unknown optimizer", None, ["--optimizer=sgd"], "--optimizer=sgd: use muon or adamw"),
    ("unknown schedule", None, ["--lr_schedule=linear"], "--lr_schedule=linear"),
    ("odd dim", None, ["--dim=65"], "dim=65 must divide"),
    ("impossible kv heads", None, ["--n_kv_heads=3"], "n_kv_heads=3"),
    ("dropout above 1", None, ["--dropout=1.5"], "dropout=1.5"),
    ("device meta", None, ["--device=meta"], "--device=meta"),
    ("float16 on cpu", None, ["--device=cpu", "--dtype=float16"], "float16"),
    ("flash attention missing", None, ["--attn_backend=fa4"], "attention backend fa4 cannot run"),
    (
        "out_dir is a file",
        lambda d, f, t, m: (t / "file").write_text(""),
        ["--out_dir={tmp}/file"],
        "is a file",
    ),
    (
        "out_dir cannot be created",
        lambda d, f, t, m: (t / "file").write_text(""),
        ["--out_dir={tmp}/file/run"],
        "cannot write to --out_dir",
    ),
    (
        "wandb missing",
        lambda d, f, t, m: m.setitem(sys.modules, "wandb", None),
        ["--wandb_log=True"],
        "pip install wandb",
    ),
] + ([] if torch.cuda.is_available() else [("cuda missing", None, ["--device=cuda"], "no CUDA")])


@pytest.mark.parametrize("case, setup, args, message", BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
def test_bad_input_fails_with_one_line_and_changes_nothing(
    case, setup, args, message, data_dir, finished_run, tmp_path, monkeypatch
):
    if setup:
        setup(data_dir, finished_run, tmp_path, monkeypatch)
    runs = [finished_run, *([tmp_path / "run"] if (tmp_path / "run").exists() else [])]
    before = {path: path.read_bytes() for run in runs for path in run.iterdir() if path.is_file()}
    args = [arg.format(tmp=tmp_path, finished=finished_run) for arg in args]
    result = run_in_process(
        "train.py", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", *TINY, *args
    )
    assert_clean_error(result, message.format(tmp=tmp_path))
    assert {path: path.read_bytes() for path in before} == before


def wait_for_log_lines(log, n, process):
    while not (log.exists() and len(log.read_text().splitlines()) >= n):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)


@pytest.mark.slow
def test_one_run_per_out_dir_and_a_sigkilled_runs_lock_dies_with_it(data_dir, tmp_path):
    out = tmp_path / "run"
    args = [f"--data_dir={data_dir}", f"--out_dir={out}", *TINY]
    first = subprocess.Popen(
        [sys.executable, "train.py", *args, "--max_iters=100000", "--eval_interval=50"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_log_lines(out / "log.jsonl", 3, first)
        log = (out / "log.jsonl").read_text()
        assert (out / "lock").read_text().strip() == f"PID {first.pid}"
        second = run_in_process("train.py", *args, "--overwrite=True")
        assert_clean_error(second, f"{out} is in use by a training run (PID {first.pid})")
        assert (out / "log.jsonl").read_text().startswith(log)  # the first run's log, untouched
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.wait()
    train(data_dir, out, "--max_iters=2", "--eval_interval=2", "--overwrite=True")


@pytest.mark.slow
def test_a_dataset_replaced_under_a_running_training_changes_nothing_in_that_run(data_dir, tmp_path, stories):
    args = ["--max_iters=60", "--eval_interval=20"]
    train(data_dir, tmp_path / "undisturbed", *args)
    moving = tmp_path / "data"
    shutil.copytree(data_dir, moving)
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"--data_dir={moving}", f"--out_dir={out}", *TINY, *args]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_log_lines(out / "log.jsonl", 2, process)
    other = write_txt(
        tmp_path / "other.txt", [s.upper() for s in stories]
    )  # other text, other bytes per token
    assert (
        run_in_process("prepare.py", f"--input={other}", f"--out_dir={moving}", "--num_proc=1").returncode
        == 0
    )
    assert process.wait(timeout=300) == 0, process.communicate()
    # the same losses and bits per byte, to the last bit: the run kept its files and its bytes per token
    assert [strip(r) for r in records(out)] == [strip(r) for r in records(tmp_path / "undisturbed")]


def strip(record):
    """A log record without its timings, which differ between any two runs."""
    return {k: v for k, v in record.items() if k not in ("ms", "tok_per_s", "elapsed")}


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    args = [f"--data_dir={data_dir}", f"--out_dir={out}", *TINY, "--max_iters=100000", "--eval_interval=20"]
    process = subprocess.Popen(
        [sys.executable, "train.py", *args, "--log_interval=100000"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_log_lines(out / "log.jsonl", 2, process)  # two evals: a checkpoint at iteration 20
    checkpoint = (out / "ckpt.pt").read_bytes()
    process.send_signal(signal.SIGINT)  # would stop at the next eval, 20 steps (about 0.4 s) away
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) != 0
    assert process.stderr.read().strip().splitlines()[-1] == "interrupted"
    assert (out / "ckpt.pt").read_bytes() == checkpoint or load_checkpoint(str(out / "ckpt.pt"))[
        "iter_num"
    ] >= 20  # the log line of iteration 20 comes before its checkpoint


def test_a_resume_after_a_torn_last_log_line_equals_an_uninterrupted_run(data_dir, finished_run, tmp_path):
    run = tmp_path / "run"
    train(data_dir, run, "--max_iters=4", "--eval_interval=4")
    with open(run / "log.jsonl", "a") as f:
        f.write('{"iter": 5, "tokens": 1280, "lo')  # killed mid-write
    train(data_dir, run, *FINISHED, "--init_from=resume")
    assert [strip(r) for r in records(run)] == [strip(r) for r in records(finished_run)]


def immutable(path):
    """Makes a directory unwritable even for root (chattr +i), or skips the test where that cannot be done."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    return path


def test_a_read_only_out_dir_fails_with_one_line_and_keeps_the_run(data_dir, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {name: (run / name).read_bytes() for name in os.listdir(run)}
    immutable(run)
    try:
        for args in (["--init_from=resume", "--max_iters=10"], ["--overwrite=True"]):
            result = run_in_process("train.py", f"--data_dir={data_dir}", f"--out_dir={run}", *TINY, *args)
            assert_clean_error(result, f"cannot write {run}", "Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(run)])
    assert {name: (run / name).read_bytes() for name in os.listdir(run) if name != "lock"} == {
        k: v for k, v in before.items() if k != "lock"
    }


def test_an_unwritable_compiler_cache_trains_eagerly_with_a_warning(data_dir, tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(immutable(tmp_path / "cache")))
    try:
        result = run_in_process(
            "train.py",
            f"--data_dir={data_dir}",
            f"--out_dir={tmp_path / 'run'}",
            *TINY,
            "--max_iters=2",
            "--eval_interval=2",
            "--compile=True",
        )
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "cache")])
    assert result.returncode == 0, result.stderr
    assert "cache is not writable: training eagerly" in result.stderr and "compile=False" in result.stdout


def test_a_batch_too_large_for_memory_is_refused_before_anything_is_written(data_dir, tmp_path):
    result = run_in_process(
        "train.py", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'run'}", *TINY, "--batch_size=100000000"
    )
    assert_clean_error(
        result, "--batch_size=100000000 of 32 tokens needs about", "--gradient_accumulation_steps"
    )
    assert not (tmp_path / "run").exists()
