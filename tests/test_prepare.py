import errno
import io
import json
import os

import numpy as np
import pytest
from conftest import assert_clean_error, run_script, write_txt

import prepare as prepare_module
import tokenizer
from configurator import configure


@pytest.fixture
def prepare(monkeypatch):
    """prepare.py's command line, run in this process; the module's options are restored after the test."""
    for key, value in configure(vars(prepare_module), []).items():
        monkeypatch.setattr(prepare_module, key, value)
    return lambda *args: prepare_module.main(["--num_proc=2", *args])


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


def bad_input(tmp_path, case):
    """(arguments, what the error line says) for each kind of bad input."""
    good = f"--input={tmp_path / 'good.txt'}"
    if case == "missing file":
        return [f"--input={tmp_path / 'nope.txt'}"], "not found"
    if case == "directory":
        (tmp_path / "stories").mkdir()
        return [f"--input={tmp_path / 'stories'}"], f"input '{tmp_path / 'stories'}' is a directory"
    if case == "unsupported extension":
        (tmp_path / "stories.csv").write_text("text\nhello\n")
        return [f"--input={tmp_path / 'stories.csv'}"], "unsupported extension"
    if case == "not UTF-8":
        (tmp_path / "latin1.txt").write_bytes("Once upon a time\n<|endoftext|>\nA café".encode("latin-1"))
        return [
            f"--input={tmp_path / 'latin1.txt'}"
        ], "latin1.txt' is not UTF-8 text (byte 0xe9 at offset 36)"
    if case == "json without text":
        json.dump([{"body": "hello"}], open(tmp_path / "x.json", "w"))
        return [f"--input={tmp_path / 'x.json'}"], "no 'text' column"
    if case == "json text not strings":
        json.dump({"text": ["a story", 42]}, open(tmp_path / "x.json", "w"))
        return [f"--input={tmp_path / 'x.json'}"], "no 'text' column of strings"
    if case == "malformed json":
        (tmp_path / "x.json").write_text('[{"text": "a story"},\n {"text": }]')
        return [
            f"--input={tmp_path / 'x.json'}"
        ], "x.json' is not valid JSON: Expecting value at line 2 column 11"
    if case == "malformed jsonl line":
        (tmp_path / "x.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": "three\n')
        return [f"--input={tmp_path / 'x.jsonl'}"], f"'{tmp_path / 'x.jsonl'}' line 4 is not valid JSON"
    if case == "parquet without text":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"body": ["hello"]}), tmp_path / "x.parquet")
        return [f"--input={tmp_path / 'x.parquet'}"], "no 'text' column"
    if case == "parquet text not strings":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "x.parquet")
        return [f"--input={tmp_path / 'x.parquet'}"], "has a 'text' column of int64, not of strings"
    if case == "not parquet":
        (tmp_path / "x.parquet").write_text("text\nhello\n")
        return [f"--input={tmp_path / 'x.parquet'}"], "is not a readable parquet file"
    if case == "empty corpus":
        (tmp_path / "empty.txt").write_text("\n<|endoftext|>\n  \n")
        return [f"--input={tmp_path / 'empty.txt'}"], "empty"
    if case == "empty val split":
        write_txt(tmp_path / "few.txt", ["one story", "two stories"])
        return [f"--input={tmp_path / 'few.txt'}", "--val_fraction=0.1"], "val split is empty"
    if case == "val_fraction 0":
        return [good, "--val_fraction=0"], "val_fraction"
    if case == "val_fraction 1.5":
        return [good, "--val_fraction=1.5"], "val_fraction"
    if case == "val_fraction 0.9999":
        return [good, "--val_fraction=0.9999"], "than it leaves for training: use a smaller --val_fraction"
    if case == "out_dir is a file":
        (tmp_path / "file").write_text("mine")
        return [good, f"--out_dir={tmp_path / 'file'}"], "is a file, not a directory"
    if case == "out_dir cannot be created":
        (tmp_path / "file").write_text("mine")
        return (
            [good, f"--out_dir={tmp_path / 'file' / 'data'}"],
            "cannot create --out_dir=",
            "Not a directory",
        )
    if case == "unknown key":
        return [good, "--vocab=4096"], "unknown key 'vocab'"
    if case == "vocab_size 256":
        return [good, "--vocab_size=256"], "vocab_size"
    if case == "vocab_size 65536":
        return [good, "--vocab_size=65536"], "vocab_size"
    if case == "wrong type":
        return [good, "--vocab_size=big"], "takes a int"


def error_line(capsys, run):
    """The one error line a run of prepare.py ends with; checks it exits 1."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any(line.startswith("error: ") for line in lines[:-1])
    return lines[-1]


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "directory",
        "unsupported extension",
        "not UTF-8",
        "json without text",
        "json text not strings",
        "malformed json",
        "malformed jsonl line",
        "parquet without text",
        "parquet text not strings",
        "not parquet",
        "empty corpus",
        "empty val split",
        "val_fraction 0",
        "val_fraction 1.5",
        "val_fraction 0.9999",
        "out_dir is a file",
        "out_dir cannot be created",
        "unknown key",
        "vocab_size 256",
        "vocab_size 65536",
        "wrong type",
    ],
)
def test_bad_input_fails_with_one_line_and_leaves_good_data(tmp_path, good_out, prepare, capsys, case):
    out, before = good_out
    args, *messages = bad_input(tmp_path, case)
    line = error_line(capsys, lambda: prepare(f"--out_dir={out}", *args))
    for message in messages:
        assert message in line
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_a_failed_first_run_leaves_no_directory(tmp_path, stories):
    """As a user sees it: the error comes on its own line after the progress bar, and nothing is left behind."""
    lines = [json.dumps({"text": story}) for story in stories] + ['{"text": "cut off']
    (tmp_path / "x.jsonl").write_text("\n".join(lines))
    result = run_script("prepare.py", f"--input={tmp_path / 'x.jsonl'}", f"--out_dir={tmp_path / 'new'}")
    assert_clean_error(result, "line 201 is not valid JSON")
    assert not (tmp_path / "new").exists()


class FullDisk(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_fails_with_one_line_and_leaves_good_data(
    tmp_path, stories, good_out, prepare, capsys, monkeypatch
):
    out, before = good_out
    monkeypatch.setattr(
        prepare_module,
        "open",
        lambda path, mode="r", **kwargs: FullDisk(path, "w") if "w" in mode else open(path, mode, **kwargs),
        raising=False,
    )
    line = error_line(capsys, lambda: prepare(f"--input={tmp_path / 'good.txt'}", f"--out_dir={out}"))
    assert (
        line
        == f"error: could not write the dataset to {out}: No space left on device; nothing there was replaced"
    )
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_leftovers_of_a_killed_run_are_removed_before_writing(tmp_path, stories, prepare, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("train.bin.tmp", "val.bin.tmp", "meta.json.tmp"):
        (out / name).write_bytes(b"half-written")
    seen = []
    write_splits = prepare_module.write_splits

    def watched_write_splits(spec):
        seen.append(os.listdir(out))
        return write_splits(spec)

    monkeypatch.setattr(prepare_module, "write_splits", watched_write_splits)
    prepare(f"--input={write_txt(tmp_path / 'all.txt', stories)}", f"--out_dir={out}")
    assert seen == [[]]
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]


def test_progress_bars_count_stories_then_bytes(tmp_path, stories, prepare, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, desc, unit, **kwargs):
            self.desc, self.unit, self.count = desc, unit, 0
            bars.append(self)

        def update(self, n):
            self.count += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(prepare_module, "tqdm", Bar)
    prepare(
        f"--input={write_txt(tmp_path / 'all.txt', stories)}",
        "--vocab_size=300",
        f"--out_dir={tmp_path / 'out'}",
    )
    meta = json.load(open(tmp_path / "out" / "meta.json"))
    assert [(bar.desc, bar.unit, bar.count) for bar in bars] == [
        ("counting pre-tokens", " stories", meta["train"]["stories"]),
        ("tokenizing", "B", sum(len(story.encode("utf-8")) for story in stories)),
    ]


def test_the_first_non_utf8_byte_is_found_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_BYTES", 4)
    path = tmp_path / "x.txt"
    path.write_bytes("aé🙂".encode() + b"\xff")  # 🙂 starts in the first 4-byte block and ends in the second
    assert prepare_module.first_non_utf8_byte(path) == (0xFF, 7)
    path.write_bytes("aaa🙂".encode()[:-1])  # cut off inside the last character
    assert prepare_module.first_non_utf8_byte(path) == (0xF0, 3)
