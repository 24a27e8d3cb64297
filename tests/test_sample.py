import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, assert_clean_error, make_stories, run_in_process, run_script, write_txt

import tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """prepare.py -> train.py through the real command lines: a tiny model on its own 300-id BPE."""
    tmp = tmp_path_factory.mktemp("e2e")
    prep = run_script(
        "prepare.py",
        f"--input={write_txt(tmp / 'stories.txt', make_stories(300))}",
        "--vocab_size=300",
        f"--out_dir={tmp / 'data'}",
    )
    assert prep.returncode == 0, prep.stderr
    train = run_script(
        "train.py",
        "config/train_smoke.py",
        f"--data_dir={tmp / 'data'}",
        f"--out_dir={tmp / 'out'}",
        "--block_size=64",
        "--max_iters=40",
        "--eval_interval=20",
        "--log_interval=10",
    )
    assert train.returncode == 0, train.stderr
    assert "iter 40: val loss" in train.stdout
    return tmp / "out"


def sample(out_dir, *args):
    """sample.py run in this process (no interpreter start-up); the end-to-end test spawns the real one."""
    return run_in_process("sample.py", f"--out_dir={out_dir}", "--max_new_tokens=40", *args)


@pytest.mark.slow
def test_end_to_end_prepare_train_sample_prints_stories(trained):
    result = run_script(
        "sample.py",
        f"--out_dir={trained}",
        "--max_new_tokens=40",
        "--start=Once upon a time",
        "--num_samples=2",
    )
    assert result.returncode == 0, result.stderr
    stories = result.stdout.split("\n" + "-" * 72 + "\n")
    assert len(stories) == 2
    for story in stories:
        assert story.startswith("Once upon a time") and len(story) > len("Once upon a time") + 10
    assert "<|endoftext|>" not in result.stdout


def test_same_seed_same_text_and_another_seed_another(trained):
    first, again, other = (sample(trained, f"--seed={s}", "--temperature=1.0").stdout for s in (3, 3, 4))
    assert first == again
    assert first != other


def test_streaming_prints_the_same_text(trained):
    assert sample(trained, "--stream=True").stdout == sample(trained, "--stream=False").stdout


@pytest.mark.parametrize("quantize", ["", "int8"])
def test_greedy_output_is_the_models_greedy_generation(trained, quantize):
    from checkpoint import load_checkpoint, model_from_checkpoint
    from fastdecode import prepare_for_decoding
    from generate import generate

    ckpt = load_checkpoint(str(trained / "best.pt"))
    model = prepare_for_decoding(model_from_checkpoint(ckpt), quantize)
    enc = tokenizer.load_tokenizer(ckpt["tokenizer"])
    prompt = [enc.eot_token] + enc.encode_ordinary("Lily and Max")
    ids = generate(
        model, torch.tensor([prompt]), 40, temperature=0, repetition_penalty=1.0, eos_id=enc.eot_token
    )[0, len(prompt) :].tolist()
    if enc.eot_token in ids:
        ids = ids[: ids.index(enc.eot_token)]
    result = sample(
        trained,
        "--start=Lily and Max",
        "--temperature=0",
        "--repetition_penalty=1.0",
        f"--quantize={quantize}",
    )
    assert result.stdout == "Lily and Max" + enc.decode(ids) + "\n"


def test_prompt_from_a_file_and_an_empty_prompt(trained, tmp_path):
    (tmp_path / "prompt.txt").write_text("The dog")
    assert sample(trained, f"--start=FILE:{tmp_path / 'prompt.txt'}").stdout.startswith("The dog")
    empty = sample(trained, "--start=")
    assert empty.returncode == 0 and empty.stdout.strip()


def test_a_prompt_longer_than_the_context_is_cropped_with_a_warning(trained):
    result = sample(trained, "--start=" + "Lily and Max play. " * 40)
    assert result.returncode == 0, result.stderr
    assert "warning: the prompt has" in result.stderr and "kept its last 63" in result.stderr


def test_quantize_is_handed_to_the_decoding_transform(trained, monkeypatch):
    import fastdecode

    prepare, seen = fastdecode.prepare_for_decoding, []
    monkeypatch.setattr(
        fastdecode,
        "prepare_for_decoding",
        lambda model, quantize="": seen.append(quantize) or prepare(model, quantize),
    )
    for quantize in ("bf16", "int8", ""):
        assert sample(trained, f"--quantize={quantize}", "--max_new_tokens=2").returncode == 0
    assert seen == ["bf16", "int8", ""]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature=-0.5"], "temperature=-0.5 must be in [0, 100]"),
        (["--temperature=101"], "temperature=101.0 must be in [0, 100]"),
        (["--top_p=0"], "top_p=0.0 must be in (0, 1]"),
        (["--top_p=1.5"], "top_p=1.5"),
        (["--top_k=-1"], "top_k=-1 must be at least 0"),
        (["--repetition_penalty=0"], "repetition_penalty=0.0 must be in [0.1, 10]"),
        (["--max_new_tokens=0"], "max_new_tokens=0 must be in [1, 100_000]"),
        (["--max_new_tokens=1000000000"], "max_new_tokens=1000000000"),
        (["--seed=-1"], "--seed=-1"),
        (["--seed=18446744073709551616"], "--seed=18446744073709551616 must be in [0, 2**63)"),
        (["--start=FILE:/nonexistent/prompt.txt"], "prompt file"),
        (["--temprature=1"], "unknown key 'temprature'"),
        (["--repetition_penalty=1e-30"], "repetition_penalty=1e-30"),
        (["--dtype=float16", "--device=cpu"], "float16"),
        (["--device=meta"], "--device=meta"),
        (["--num_samples=0"], "--num_samples"),
        (["--ckpt=nope.pt"], "no checkpoint"),
        (["--quantize=int4"], "--quantize=int4: use '' or bf16 or int8"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device=cuda"], "no CUDA")]),
)
def test_bad_options_fail_with_one_line(trained, args, message):
    assert_clean_error(run_in_process("sample.py", f"--out_dir={trained}", *args), message)


def test_a_prompt_file_that_is_not_utf8_fails_with_one_line(trained, tmp_path):
    (tmp_path / "prompt.txt").write_bytes(b"The dog \xff\xfe")
    assert_clean_error(sample(trained, f"--start=FILE:{tmp_path / 'prompt.txt'}"), "not UTF-8")


def test_only_the_story_goes_to_stdout(trained):
    result = sample(trained, "--start=Once upon a time")
    assert result.stdout.startswith("Once upon a time") and "attention" not in result.stdout
    assert "achieved tok/s:" in result.stderr and "achieved" not in result.stdout
    assert f"loading {trained / 'best.pt'}" in result.stderr


def test_several_samples_decode_as_one_batch_and_each_is_its_seeds_text(trained):
    batch = sample(trained, "--num_samples=3", "--seed=5", "--temperature=1.0").stdout.split(
        "\n" + "-" * 72 + "\n"
    )
    assert len(batch) == 3 and len(set(batch)) == 3
    for i, text in enumerate(batch):
        alone = sample(trained, f"--seed={5 + i}", "--temperature=1.0").stdout
        assert alone == text


@pytest.fixture
def fake_compiled_step(monkeypatch):
    """compile_for_decoding replaced by a recorder (the real build is tested in test_fastdecode.py): the build
    flag of each call, and how many decode steps ran through the step it returned."""
    import fastdecode

    calls = {"builds": [], "steps": 0}
    built = set()

    def compile_for_decoding(model, batch_size, build=True):
        calls["builds"].append(build)
        if build:
            built.add(batch_size)
        if batch_size not in built:
            return None

        def step(idx, cache, pos):
            calls["steps"] += 1
            return model(idx, cache=cache, pos=pos)

        return step

    monkeypatch.setattr(fastdecode, "compile_for_decoding", compile_for_decoding)
    return calls


def test_sample_uses_the_compiled_step_once_built_and_never_with_compile_false(trained, fake_compiled_step):
    eager = sample(trained, "--compile=False", "--temperature=0")
    assert fake_compiled_step["builds"] == [] and "note: decoding eagerly" not in eager.stderr
    first = sample(trained, "--temperature=0")  # the default: the step if built, else eager with a note
    assert fake_compiled_step == {"builds": [False], "steps": 0} and "--compile=True builds" in first.stderr
    built = sample(trained, "--compile=True", "--temperature=0")
    assert fake_compiled_step["builds"] == [False, True] and fake_compiled_step["steps"] > 0
    steps = fake_compiled_step["steps"]
    later = sample(trained, "--temperature=0")
    assert fake_compiled_step["steps"] > steps and "note" not in later.stderr
    assert eager.stdout == first.stdout == built.stdout == later.stdout
    for value in ("yes", "1"):
        assert_clean_error(
            sample(trained, f"--compile={value}"), f"--compile={value}: use None or True or False"
        )


def test_missing_and_foreign_checkpoints_fail_with_one_line(tmp_path):
    assert_clean_error(sample(tmp_path), "no checkpoint")
    torch.save({"model": {}, "model_args": {}}, tmp_path / "ckpt.pt")  # say, a nanoGPT checkpoint
    assert_clean_error(sample(tmp_path), "unknown checkpoint format")


def test_too_many_samples_for_memory_are_refused_in_one_line(trained):
    result = sample(trained, "--num_samples=1000000", "--max_new_tokens=2")
    assert_clean_error(result, "1,000,000 sequences at once need about", "--num_samples")


def test_a_temperature_or_top_p_too_small_to_sample_at_is_greedy(trained):
    greedy = sample(trained, "--temperature=0").stdout
    assert sample(trained, "--temperature=1e-38").stdout == greedy
    assert sample(trained, "--top_p=1e-300").stdout == greedy  # the nucleus keeps its most likely token


def test_escape_codes_reach_a_terminal_escaped_and_a_pipe_as_they_are(trained, tmp_path):
    import pty

    (tmp_path / "prompt.txt").write_text("Lily \x1b[31mred\x1b[0m and Max")
    args = [
        sys.executable,
        "sample.py",
        f"--out_dir={trained}",
        f"--start=FILE:{tmp_path / 'prompt.txt'}",
        "--max_new_tokens=3",
    ]
    piped = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert piped.stdout.startswith("Lily \x1b[31mred\x1b[0m and Max")  # a file gets the text itself
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, cwd=ROOT, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        shown += chunk
    assert process.wait(timeout=60) == 0
    assert b"Lily \\x1b[31mred\\x1b[0m and Max" in shown and b"\x1b" not in shown


def test_an_unwritable_compiler_cache_samples_eagerly_with_a_warning(trained, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    if subprocess.run(["chattr", "+i", str(cache)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    try:
        result = sample(trained, "--compile=True", "--temperature=0")
    finally:
        subprocess.run(["chattr", "-i", str(cache)])
    assert (
        result.returncode == 0
        and result.stdout == sample(trained, "--compile=False", "--temperature=0").stdout
    )
    assert (
        "warning: compiling the decode step failed" in result.stderr and "decoding eagerly" in result.stderr
    )
