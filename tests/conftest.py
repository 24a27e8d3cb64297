import gc
import os
import random
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configurator import UserError  # noqa: E402  (the repository is importable only from here on)
from model import Llama, ModelConfig  # noqa: E402

WORDS = (
    "Once upon a time there was a little girl named Lily . She liked to play in the park with her "
    'dog Max . One day , they found a big red ball ! " Look ! " said Lily . They were happy and '
    "shared the toy . The sun was warm , and the birds sang . café naïve 🙂 3 12 it's don't"
).split()


def make_stories(n, seed=0):
    """n small stories in TinyStories' style, with punctuation, digits, quotes, newlines and non-ASCII."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        paragraphs = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(rng.randint(1, 3))
        ]
        stories.append("\n\n".join(paragraphs))
    return stories


def write_txt(path, stories):
    """The official TinyStories-*.txt layout: each story followed by a line <|endoftext|>."""
    with open(path, "w", encoding="utf-8") as f:
        for story in stories:
            f.write(story + "\n<|endoftext|>\n")
    return str(path)


def run_script(*args, cwd=ROOT, timeout=300):
    """Runs a repository script as a user would; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_clean_error(result, *fragments):
    """One 'error:' line naming the problem, a non-zero exit, and no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A small prepared corpus with a 300-id BPE vocabulary, shared by the training tests."""
    tmp = tmp_path_factory.mktemp("data")
    result = run_in_process(
        "prepare.py",
        f"--input={write_txt(tmp / 'stories.txt', make_stories(300))}",
        "--vocab_size=300",
        f"--out_dir={tmp / 'data'}",
        "--num_proc=1",
    )
    assert result.returncode == 0, result.stderr
    return tmp / "data"


@pytest.fixture(scope="session")
def stories():
    return make_stories(200)


def tiny(**overrides):
    """A small random Llama in eval mode: 97 ids, context 32, grouped-query attention."""
    torch.manual_seed(0)
    cfg = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, max_seq_len=32)
    return Llama(ModelConfig(**{**cfg, **overrides})).eval()


def all_logits(model, idx, cache=None, pos=0):
    """The float32 logits at every position."""
    return model.lm_head(model.hidden(idx, cache, pos)).float()


def run_in_process(script, *args):
    """Runs a repository script in this process (no interpreter start-up): (exit code, stdout, stderr).

    A UserError that escapes the script ends it as configure()'s hook ends a real run: one error line, exit 1.
    Any other exception is re-raised, so a traceback fails the test.
    """
    import contextlib
    import io
    import runpy

    out, err = io.StringIO(), io.StringIO()
    import signal

    argv, handlers = sys.argv, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.argv = [script, *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except UserError as e:
        err.write(f"error: {e}\n")
        code = 1
    finally:
        gc.collect()  # the script's objects, as its process's exit would: an open file's lock, say
        sys.argv = argv
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
