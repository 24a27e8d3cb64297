"""compare.py's table, seed groups and plot, and the code version every checkpoint records."""

import json
import pathlib
import random
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import torch
from conftest import ROOT, make_stories, run_in_process, run_script, write_txt

from checkpoint import save_checkpoint

SVG = "{http://www.w3.org/2000/svg}"


def fake_run(path, config, finals, code=None):
    """A run directory as train.py leaves it: log.jsonl (train lines, then evals ending at the final bpb) and
    a checkpoint holding the config and code version."""
    path.mkdir(parents=True)
    records = []
    for i, bpb in enumerate(finals, 1):
        records.append({"iter": 10 * i, "tokens": 4096 * i, "loss": 3.0 - 0.1 * i, "elapsed": 2.0 * i})
        records.append(
            {"iter": 10 * i, "tokens": 4096 * i, "val_loss": bpb * 2.7, "val_bpb": bpb, "elapsed": 2.0 * i}
        )
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    checkpoint = {"model_args": {}, "model": {}, "tokenizer": {"kind": "gpt2"}, "config": config}
    save_checkpoint({**checkpoint, "code": code or {"model_py": "0123456789ab"}}, str(path / "ckpt.pt"))
    return records


def compare(tmp_path, *patterns):
    result = run_in_process("compare.py", *map(str, patterns), f"--output={tmp_path / 'c.svg'}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_table_holds_each_runs_figures_from_its_log_and_the_options_that_differ(tmp_path):
    base = {"out_dir": "x", "seed": 1, "learning_rate": 0.02, "dim": 64}
    fake_run(
        tmp_path / "a",
        base,
        [1.50, 1.31, 1.33],
        {"model_py": "aaaaaaaaaaaa", "commit": "f" * 40, "dirty": True},
    )
    fake_run(tmp_path / "b", {**base, "learning_rate": 0.01}, [1.60, 1.45])
    lines = compare(tmp_path, tmp_path / "a", tmp_path / "b").splitlines()
    assert lines[0].split()[-1] == "learning_rate"  # the one option that differs; seed and dim do not show
    a, b = (line.split() for line in lines[1:3])
    assert a[:5] == [
        str(tmp_path / "a"),
        "1.3100",
        "1.3300",
        "0.01M",
        "6s",
    ]  # best, final, 12,288 tokens, 6 s
    assert "model.py aaaaaaaaaaaa, git fffffff (dirty)" in lines[1] and a[-1] == "0.02"
    assert b[:5] == [str(tmp_path / "b"), "1.4500", "1.4500", "0.01M", "4s"] and b[-1] == "0.01"


def seeds(tmp_path, name, config, mean, spread, n):
    rng = random.Random(name)
    for seed in range(n):
        fake_run(tmp_path / f"{name}-{seed}", {**config, "seed": seed}, [2.0, rng.gauss(mean, spread)])


def test_runs_that_differ_only_in_seed_form_groups_and_the_rule_tells_noise_from_a_difference(tmp_path):
    seeds(tmp_path, "silu", {"act": "silu"}, 1.232, 0.004, 4)
    seeds(tmp_path, "gelu", {"act": "gelu"}, 1.232, 0.004, 4)  # the same distribution
    seeds(tmp_path, "wide", {"act": "wide"}, 1.180, 0.004, 4)  # clearly lower
    out = compare(tmp_path, tmp_path / "silu-*", tmp_path / "gelu-*", tmp_path / "wide-*")
    assert "A: 4 runs" in out and "B: 4 runs" in out and "C: 4 runs" in out
    verdicts = {line.split(":")[0].strip(): line for line in out.splitlines() if " - A:" in line}
    assert "not significant" in verdicts["B - A"]
    assert "larger than the seeds' spread" in verdicts["C - A"]


def test_runs_of_other_code_are_another_group_not_more_seeds(tmp_path):
    # the README's loop: the same options, model.py edited between the two sets of seeds
    for name, model_py in (("silu", "5c9153fc8f61"), ("gelu", "0cf302829e6c")):
        for seed, bpb in ((1, 1.2396), (2, 1.2584), (3, 1.2565)):
            fake_run(tmp_path / f"{name}-{seed}", {"seed": seed}, [bpb], code={"model_py": model_py})
    out = compare(tmp_path, tmp_path / "silu-*", tmp_path / "gelu-*")
    assert "A: 3 runs" in out and "B: 3 runs" in out and "B - A:" in out
    (tmp_path / "gelu-3" / "code.diff").write_text("-x = 1\n+x = 2\n")  # train.py edited in a dirty tree
    assert "C: 1 run" in compare(tmp_path, tmp_path / "silu-*", tmp_path / "gelu-*")


def test_one_run_a_side_is_never_called_a_difference(tmp_path):
    fake_run(tmp_path / "a", {"act": "silu", "seed": 1}, [1.2338])
    fake_run(tmp_path / "b", {"act": "gelu", "seed": 1}, [1.2298])
    fake_run(tmp_path / "c", {"act": "silu", "seed": 2}, [1.2334])
    out = compare(tmp_path, tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert "run at least 2 seeds of each to tell it from seed noise" in out


def test_the_plot_has_one_line_per_run_and_curve_and_labelled_axes(tmp_path):
    fake_run(tmp_path / "a", {"seed": 1}, [1.5, 1.4])
    fake_run(tmp_path / "b", {"seed": 2}, [1.6, 1.3, 1.2])
    compare(tmp_path, tmp_path / "a", tmp_path / "b")
    svg = ET.parse(tmp_path / "c.svg").getroot()
    titles = [line.find(f"{SVG}title").text for line in svg.iter(f"{SVG}polyline")]
    assert sorted(titles) == sorted([str(tmp_path / "a"), str(tmp_path / "b")] * 2)  # train and val, each run
    texts = {t.text for t in svg.iter(f"{SVG}text")}
    assert {"train loss (nats/token)", "val bits per byte", "tokens seen"} <= texts


def test_a_run_named_twice_is_one_run(tmp_path):
    fake_run(tmp_path / "a", {"seed": 1}, [1.5, 1.4])
    (tmp_path / "link").symlink_to(tmp_path / "a")
    out = compare(tmp_path, tmp_path / "a", f"{tmp_path / 'a'}/", f"{tmp_path / 'a'}/.", tmp_path / "link")
    assert (
        len([line for line in out.splitlines() if line.startswith(str(tmp_path))]) == 1
        and "groups" not in out
    )


@pytest.mark.parametrize(
    "output, message",
    [
        ("{tmp}/a/ckpt.pt", "exists and is not an earlier output of this kind: it is kept"),
        ("{tmp}/a", "is a directory: name a file"),
        ("", "is empty: name a file"),
        ("/dev/null", "exists and is not an earlier output"),
    ],
)
def test_an_output_that_is_not_an_earlier_plot_is_never_replaced(tmp_path, output, message):
    fake_run(tmp_path / "a", {"seed": 1}, [1.5, 1.4])
    before = (tmp_path / "a" / "ckpt.pt").read_bytes()
    result = run_in_process("compare.py", str(tmp_path / "a"), f"--output={output.format(tmp=tmp_path)}")
    assert result.returncode == 1 and message in result.stderr.splitlines()[-1]
    assert (tmp_path / "a" / "ckpt.pt").read_bytes() == before


def test_a_directory_that_is_not_a_run_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_in_process("compare.py", str(tmp_path / "empty"))
    assert result.returncode == 1 and "is not a training run's out_dir" in result.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The repository's scripts in a git checkout of their own, with a small prepared dataset."""
    repo = tmp_path_factory.mktemp("copy")
    for item in pathlib.Path(ROOT).glob("*.py"):
        shutil.copy(item, repo)
    shutil.copytree(f"{ROOT}/config", repo / "config")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    stories = write_txt(repo / "stories.txt", make_stories(120))
    prep = run_script("prepare.py", f"--input={stories}", "--vocab_size=300", "--out_dir=data", cwd=repo)
    assert prep.returncode == 0, prep.stderr
    return repo


TINY = ["--data_dir=data", "--dim=32", "--n_layers=2", "--n_heads=4", "--block_size=32", "--batch_size=4"]
TINY += ["--gradient_accumulation_steps=1", "--eval_iters=2", "--compile=False", "--warmup_iters=2"]


@pytest.mark.slow
def test_checkpoints_record_the_code_and_a_changed_model_py_is_named_by_every_loader(repo_copy):
    repo = repo_copy
    train = run_script("train.py", *TINY, "--out_dir=out", "--max_iters=4", "--eval_interval=4", cwd=repo)
    assert train.returncode == 0, train.stderr
    code = torch.load(repo / "out" / "ckpt.pt", weights_only=True)["code"]
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert code["commit"] == commit.stdout.strip() and code["dirty"] is False and len(code["model_py"]) == 12
    assert not (repo / "out" / "code.diff").exists()
    loaders = {
        "sample.py": ["--out_dir=out", "--max_new_tokens=3"],
        "eval.py": ["--out_dir=out", "--samples=0"],
        "export.py": ["--out_dir=out", "--hf_dir=hf"],
        "serve.py": ["--out_dir=out", "--host=256.0.0.1"],  # loads the model, then cannot listen there
    }
    for script, args in loaders.items():  # model.py as it was: not a word
        assert "warning" not in run_script(script, *args, cwd=repo).stderr, script

    with open(repo / "model.py", "a") as f:
        f.write("\n# an edit\n")
    for script, args in loaders.items():
        warnings = [
            line for line in run_script(script, *args, cwd=repo).stderr.splitlines() if "model.py" in line
        ]
        assert len(warnings) == 1 and warnings[0].startswith("warning: "), (script, warnings)
        assert f"model.py {code['model_py']}" in warnings[0] and "may not mean the same" in warnings[0]
    assert json.load(open(repo / "hf" / "config.json"))["tinyllama_code"] == code

    resume = run_script("train.py", *TINY, "--out_dir=out", "--max_iters=6", "--init_from=resume", cwd=repo)
    assert resume.returncode == 1 and "model.py changed since" in resume.stderr.splitlines()[-1]
    allowed = run_script(
        "train.py",
        *TINY,
        "--out_dir=out",
        "--max_iters=6",
        "--init_from=resume",
        "--allow_code_change=True",
        cwd=repo,
    )
    assert allowed.returncode == 0 and "may not mean the same" in allowed.stderr
    dirty = torch.load(repo / "out" / "ckpt.pt", weights_only=True)["code"]
    assert dirty["dirty"] is True and dirty["model_py"] != code["model_py"]
    assert (
        "+# an edit" in (repo / "out" / "code.diff").read_text()
    )  # the run can be redone from its directory
    table = run_script("compare.py", "out", cwd=repo).stdout
    assert f"model.py {dirty['model_py']}, git {code['commit'][:7]} (dirty)" in table
