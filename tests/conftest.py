import os
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = ("Once upon a time there was a little girl named Lily . She liked to play in the park with her "
         "dog Max . One day , they found a big red ball ! \" Look ! \" said Lily . They were happy and "
         "shared the toy . The sun was warm , and the birds sang . café naïve 🙂 3 12 it's don't").split()


def make_stories(n, seed=0):
    """n small stories in TinyStories' style, with punctuation, digits, quotes, newlines and non-ASCII."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(rng.randint(1, 3))]
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
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_clean_error(result, *fragments):
    """One 'error:' line naming the problem, a non-zero exit, and no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture(scope="session")
def stories():
    return make_stories(200)
