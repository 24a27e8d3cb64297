import builtins
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tqdm
from conftest import ROOT, assert_clean_error, run_in_process, run_script, write_txt

import data
import tokenizer


@pytest.fixture
def prepare():
    """prepare.py's command line, run in this process; a failure fails the test."""

    def run(*args):
        result = run_in_process("prepare.py", "--num_proc=2", *args)
        assert result.returncode == 0, result.stderr
        return result

    return run


def load(out_dir):
    meta = json.load(open(os.path.join(out_dir, "meta.json")))
    bins = {
        split: np.memmap(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        for split in ("train", "val")
    }
    return meta, bins


def decode_stories(enc, ids):
    """The stories a token stream holds: split at <|endoftext|>, which must end the stream."""
    ids = ids.tolist()
    assert ids[-1] == enc.eot_token
    stories, start = [], 0
    for i, t in enumerate(ids):
        if t == enc.eot_token:
            stories.append(enc.decode(ids[start:i]))
            start = i + 1
    return stories


def test_txt_with_val_input_gives_exact_streams(tmp_path, stories, prepare):
    train, val = stories[:150], stories[150:]
    out = tmp_path / "out"
    prepare(
        f"--input={write_txt(tmp_path / 'train.txt', train)}",
        f"--val_input={write_txt(tmp_path / 'val.txt', val)}",
        f"--out_dir={out}",
    )
    meta, bins = load(out)
    enc = tokenizer.gpt2_encoding()
    for split, texts in (("train", train), ("val", val)):
        ids = bins[split]
        assert ids.dtype == np.uint16
        assert os.path.getsize(out / f"{split}.bin") == 2 * len(ids) == 2 * meta[split]["tokens"]
        expected = [t for s in texts for t in enc.encode_ordinary(s) + [enc.eot_token]]
        assert ids.tolist() == expected
        assert int((ids == enc.eot_token).sum()) == meta[split]["stories"] == len(texts)
        assert meta[split]["bytes"] == sum(len(s.encode("utf-8")) for s in texts)
    assert meta["tokenizer"] == tokenizer.gpt2_spec()
    assert meta["vocab_size"] == 50257 and meta["eot_id"] == 50256


def test_val_fraction_holds_out_evenly_spread_stories(tmp_path, stories, prepare):
    out = tmp_path / "out"
    prepare(f"--input={write_txt(tmp_path / 'all.txt', stories)}", "--val_fraction=0.1", f"--out_dir={out}")
    meta, bins = load(out)
    enc = tokenizer.gpt2_encoding()
    assert meta["val"]["stories"] == 20 and meta["train"]["stories"] == 180
    val = decode_stories(enc, bins["val"])
    assert val == stories[9::10]
    assert decode_stories(enc, bins["train"]) == [s for i, s in enumerate(stories) if i % 10 != 9]


def write_format(tmp_path, fmt, stories):
    path = tmp_path / f"data.{fmt.split('-')[0]}"
    if fmt == "json":
        json.dump([{"text": s} for s in stories], open(path, "w"))
    elif fmt == "json-columns":
        json.dump({"text": stories}, open(path, "w"))
    elif fmt == "json-shard":  # TinyStories_all_data.tar.gz's layout
        json.dump(
            [{"story": s, "instruction": {}, "summary": "", "source": "GPT-4"} for s in stories],
            open(path, "w"),
        )
    elif fmt == "json-lines":
        path.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(stories)))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": stories, "n": list(range(len(stories)))}), path)
    return path


@pytest.mark.parametrize("fmt", ["json", "json-columns", "json-shard", "json-lines", "jsonl", "parquet"])
def test_every_input_format_gives_the_txt_result(tmp_path, stories, fmt, prepare):
    prepare(f"--input={write_txt(tmp_path / 'a.txt', stories)}", f"--out_dir={tmp_path / 'txt'}")
    prepare(f"--input={write_format(tmp_path, fmt, stories)}", f"--out_dir={tmp_path / 'other'}")
    for split in ("train", "val"):
        assert (tmp_path / "txt" / f"{split}.bin").read_bytes() == (
            tmp_path / "other" / f"{split}.bin"
        ).read_bytes()


def test_several_files_and_globs_are_concatenated_in_order(tmp_path, stories, prepare):
    write_txt(tmp_path / "part1.txt", stories[:100])
    write_txt(tmp_path / "part2.txt", stories[100:])
    prepare(f"--input={write_txt(tmp_path / 'all.txt', stories)}", f"--out_dir={tmp_path / 'one'}")
    prepare(f"--input={tmp_path / 'part*.txt'}", f"--out_dir={tmp_path / 'glob'}")
    prepare(f"--input={tmp_path / 'part1.txt'},{tmp_path / 'part2.txt'}", f"--out_dir={tmp_path / 'list'}")
    for out in ("glob", "list"):
        assert (tmp_path / out / "train.bin").read_bytes() == (tmp_path / "one" / "train.bin").read_bytes()


def test_custom_bpe_vocabulary_is_trained_saved_and_deterministic(tmp_path, stories, prepare):
    txt = write_txt(tmp_path / "all.txt", stories)
    prepare(f"--input={txt}", "--vocab_size=300", f"--out_dir={tmp_path / 'a'}")
    prepare(f"--input={txt}", "--vocab_size=300", f"--out_dir={tmp_path / 'b'}", "--num_proc=1")
    meta, bins = load(tmp_path / "a")
    assert (
        meta["vocab_size"] == 300
        and meta["eot_id"] == 299
        and tokenizer.spec_kind(meta["tokenizer"]) == "bpe"
    )
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()
    assert json.load(open(tmp_path / "b" / "meta.json"))["tokenizer"] == meta["tokenizer"]
    enc = tokenizer.load_tokenizer(meta["tokenizer"])
    assert int(bins["train"].max()) == 299
    assert decode_stories(enc, bins["train"]) == [s for i, s in enumerate(stories) if (i + 1) % 20 != 0]


def test_download_path_reads_the_hf_train_and_validation_splits(tmp_path, stories, monkeypatch, prepare):
    import datasets

    splits = {
        "train": datasets.Dataset.from_dict({"text": stories[:150]}),
        "validation": datasets.Dataset.from_dict({"text": stories[150:]}),
    }
    asked = []

    def load_dataset(name, split):
        asked.append((name, split))
        return splits[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    prepare(f"--out_dir={tmp_path / 'hf'}")
    assert asked == [("roneneldan/TinyStories", "train"), ("roneneldan/TinyStories", "validation")]
    prepare(
        f"--input={write_txt(tmp_path / 't.txt', stories[:150])}",
        f"--val_input={write_txt(tmp_path / 'v.txt', stories[150:])}",
        f"--out_dir={tmp_path / 'local'}",
    )
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_rerun_with_same_inputs_gives_identical_output(tmp_path, stories, prepare):
    txt = write_txt(tmp_path / "all.txt", stories)
    prepare(f"--input={txt}", f"--out_dir={tmp_path / 'out'}")
    first = (tmp_path / "out" / "train.bin").read_bytes()
    prepare(f"--input={txt}", f"--out_dir={tmp_path / 'out'}")
    assert (tmp_path / "out" / "train.bin").read_bytes() == first
    assert sorted(os.listdir(tmp_path / "out")) == ["meta.json", "train.bin", "val.bin"]


@pytest.fixture
def good_out(tmp_path, stories, prepare):
    """A directory holding a good prepared dataset, which no failed run may touch."""
    out = tmp_path / "out"
    prepare(f"--input={write_txt(tmp_path / 'good.txt', stories)}", f"--out_dir={out}")
    return out, {name: (out / name).read_bytes() for name in os.listdir(out)}


def parquet(columns):
    def write(path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)

    return write


GOOD = "--input={tmp}/good.txt"
# (case, files to write first: {name: text, bytes, a writer, or None for a directory}, arguments, what the
# line says)
BAD_INPUT = [
    ("missing file", {}, ["--input={tmp}/nope.txt"], "not found"),
    ("a device", {}, ["--input=/dev/null"], "input file '/dev/null' is not a regular file"),
    ("directory", {"stories": None}, ["--input={tmp}/stories"], "input '{tmp}/stories' is a directory"),
    ("unsupported extension", {"s.csv": "text\nhello\n"}, ["--input={tmp}/s.csv"], "unsupported extension"),
    (
        "not UTF-8",
        {"latin1.txt": "Once upon a time\n<|endoftext|>\nA café".encode("latin-1")},
        ["--input={tmp}/latin1.txt"],
        "latin1.txt' is not UTF-8 text (byte 0xe9 at offset 36)",
    ),
    ("json without text", {"x.json": '[{"body": "hello"}]'}, ["--input={tmp}/x.json"], "no 'text' column"),
    (
        "json text not strings",
        {"x.json": '{"text": ["a", 42]}'},
        ["--input={tmp}/x.json"],
        "no 'text' column of strings",
    ),
    (
        "malformed json",
        {"x.json": '[{"text": "a story"},\n {"text": }]'},
        ["--input={tmp}/x.json"],
        "x.json' is not valid JSON: Expecting value at line 2 column 11",
    ),
    (
        "malformed jsonl line",
        {"x.jsonl": '{"text": "one"}\n\n{"text": "two"}\n{"text": "three\n'},
        ["--input={tmp}/x.jsonl"],
        "'{tmp}/x.jsonl' line 4 is not valid JSON",
    ),
    (
        "parquet without text",
        {"x.parquet": parquet({"body": ["hi"]})},
        ["--input={tmp}/x.parquet"],
        "no 'text' column",
    ),
    (
        "parquet text not strings",
        {"x.parquet": parquet({"text": [1, 2]})},
        ["--input={tmp}/x.parquet"],
        "has a 'text' column of int64, not of strings",
    ),
    (
        "not parquet",
        {"x.parquet": "text\nhello\n"},
        ["--input={tmp}/x.parquet"],
        "is not a readable parquet file",
    ),
    ("empty corpus", {"empty.txt": "\n<|endoftext|>\n  \n"}, ["--input={tmp}/empty.txt"], "empty"),
    (
        "empty val split",
        {"few.txt": "one story\n<|endoftext|>\ntwo stories\n<|endoftext|>\n"},
        ["--input={tmp}/few.txt", "--val_fraction=0.1"],
        "val split is empty",
    ),
    ("val_fraction 0", {}, [GOOD, "--val_fraction=0"], "--val_fraction=0.0 must be in (0, 1)"),
    ("val_fraction 1.5", {}, [GOOD, "--val_fraction=1.5"], "--val_fraction=1.5 must be in (0, 1)"),
    ("val_fraction nan", {}, [GOOD, "--val_fraction=nan"], "--val_fraction=nan"),
    (
        "val_fraction 0.9999",
        {},
        [GOOD, "--val_fraction=0.9999"],
        "than it leaves for training: use a smaller",
    ),
    ("out_dir is a file", {"file": "mine"}, [GOOD, "--out_dir={tmp}/file"], "is a file, not a directory"),
    ("out_dir cannot be created", {"file": "mine"}, [GOOD, "--out_dir={tmp}/file/data"], "Not a directory"),
    ("unknown key", {}, [GOOD, "--vocab=4096"], "unknown key 'vocab'"),
    (
        "vocab_size 256",
        {},
        [GOOD, "--vocab_size=256"],
        "--vocab_size=256: use 0 for GPT-2's tokenizer, or 257",
    ),
    ("vocab_size 65536", {}, [GOOD, "--vocab_size=65536"], "--vocab_size=65536 must be in [0, 65535]"),
    ("wrong type", {}, [GOOD, "--vocab_size=big"], "takes a int"),
    ("num_proc 0", {}, [GOOD, "--num_proc=0"], "--num_proc=0 must be at least 1"),
]


@pytest.mark.parametrize("case, files, args, message", BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
def test_bad_input_fails_with_one_line_and_leaves_good_data(tmp_path, good_out, case, files, args, message):
    out, before = good_out
    for name, content in files.items():
        path = tmp_path / name
        if content is None:
            path.mkdir()
        elif callable(content):
            content(path)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = run_in_process("prepare.py", f"--out_dir={out}", *args)
    assert_clean_error(result, message.format(tmp=tmp_path))
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_a_failed_first_run_leaves_no_directory(tmp_path, stories):
    """As a user sees it: the error comes on its own line after the progress bar, and nothing is left."""
    lines = [json.dumps({"text": story}) for story in stories] + ['{"text": "cut off']
    (tmp_path / "x.jsonl").write_text("\n".join(lines))
    result = run_script("prepare.py", f"--input={tmp_path / 'x.jsonl'}", f"--out_dir={tmp_path / 'new'}")
    assert_clean_error(result, "line 201 is not valid JSON")
    assert not (tmp_path / "new").exists()


class FullDisk(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_fails_with_one_line_and_leaves_good_data(tmp_path, good_out, monkeypatch):
    out, before = good_out
    real_open = builtins.open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        return (
            FullDisk(path, "w") if str(path).endswith(".bin.tmp") else real_open(path, mode, *args, **kwargs)
        )

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    result = run_in_process("prepare.py", f"--input={tmp_path / 'good.txt'}", f"--out_dir={out}")
    monkeypatch.undo()
    assert_clean_error(
        result, f"could not write the dataset to {out}: No space left on device; nothing there was replaced"
    )
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


class Bar:
    """tqdm's place: records each progress bar, and what the output directory held when it began."""

    bars = []

    def __init__(self, desc, unit, **kwargs):
        self.desc, self.unit, self.count = desc, unit, 0
        self.found = sorted(os.listdir(Bar.out)) if os.path.isdir(Bar.out) else None
        Bar.bars.append(self)

    def update(self, n):
        self.count += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_progress_bars_count_stories_then_bytes_and_a_killed_runs_leftovers_are_gone_first(
    tmp_path, stories, prepare, monkeypatch
):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("train.bin.tmp", "val.bin.tmp", "meta.json.tmp"):
        (out / name).write_bytes(b"half-written")
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    monkeypatch.setattr(Bar, "bars", [])
    monkeypatch.setattr(Bar, "out", out, raising=False)
    prepare(f"--input={write_txt(tmp_path / 'all.txt', stories)}", "--vocab_size=300", f"--out_dir={out}")
    meta = json.load(open(out / "meta.json"))
    assert [(bar.desc, bar.unit, bar.count) for bar in Bar.bars] == [
        ("counting pre-tokens", " stories", meta["train"]["stories"]),
        ("tokenizing", "B", sum(len(story.encode("utf-8")) for story in stories)),
    ]
    assert Bar.bars[0].found == []  # the leftovers were removed before any work
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]


@pytest.mark.slow
def test_ctrl_c_ends_prepare_with_one_line_within_seconds_and_leaves_no_temporary_files(tmp_path, stories):
    big = write_txt(tmp_path / "big.txt", stories * 400)  # long enough to be interrupted mid-way
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "prepare.py", f"--input={big}", f"--out_dir={out}", "--num_proc=2"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (out / "train.bin.tmp").exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    began = time.perf_counter()
    err = process.communicate(timeout=20)[1]
    assert time.perf_counter() - began < 5
    assert_clean_error(subprocess.CompletedProcess([], process.returncode, "", err), "interrupted")
    assert not out.exists() or os.listdir(out) == []


def test_the_first_non_utf8_byte_is_found_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "BATCH_BYTES", 4)
    path = tmp_path / "x.txt"
    path.write_bytes("aé🙂".encode() + b"\xff")  # 🙂 starts in the first 4-byte block and ends in the second
    assert data.first_non_utf8_byte(path) == (0xFF, 7)
    path.write_bytes("aaa🙂".encode()[:-1])  # cut off inside the last character
    assert data.first_non_utf8_byte(path) == (0xF0, 3)
