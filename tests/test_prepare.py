import json
import os

import numpy as np
import pytest

import tokenizer
from conftest import assert_clean_error, run_script, write_txt


def prepare(*args):
    result = run_script("prepare.py", "--num_proc=2", *args)
    assert result.returncode == 0, result.stderr
    return result


def load(out_dir):
    meta = json.load(open(os.path.join(out_dir, "meta.json")))
    bins = {split: np.memmap(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16, mode="r") for split in ("train", "val")}
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


def test_txt_with_val_input_gives_exact_streams(tmp_path, stories):
    train, val = stories[:150], stories[150:]
    out = tmp_path / "out"
    prepare(f"--input={write_txt(tmp_path / 'train.txt', train)}", f"--val_input={write_txt(tmp_path / 'val.txt', val)}",
            f"--out_dir={out}")
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
    assert meta["tokenizer"] == {"kind": "gpt2"}
    assert meta["vocab_size"] == 50257 and meta["eot_id"] == 50256


def test_val_fraction_holds_out_evenly_spread_stories(tmp_path, stories):
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
        json.dump([{"story": s, "instruction": {}, "summary": "", "source": "GPT-4"} for s in stories], open(path, "w"))
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
def test_every_input_format_gives_the_txt_result(tmp_path, stories, fmt):
    prepare(f"--input={write_txt(tmp_path / 'a.txt', stories)}", f"--out_dir={tmp_path / 'txt'}")
    prepare(f"--input={write_format(tmp_path, fmt, stories)}", f"--out_dir={tmp_path / 'other'}")
    for split in ("train", "val"):
        assert (tmp_path / "txt" / f"{split}.bin").read_bytes() == (tmp_path / "other" / f"{split}.bin").read_bytes()


def test_several_files_and_globs_are_concatenated_in_order(tmp_path, stories):
    write_txt(tmp_path / "part1.txt", stories[:100])
    write_txt(tmp_path / "part2.txt", stories[100:])
    prepare(f"--input={write_txt(tmp_path / 'all.txt', stories)}", f"--out_dir={tmp_path / 'one'}")
    prepare(f"--input={tmp_path / 'part*.txt'}", f"--out_dir={tmp_path / 'glob'}")
    prepare(f"--input={tmp_path / 'part1.txt'},{tmp_path / 'part2.txt'}", f"--out_dir={tmp_path / 'list'}")
    for out in ("glob", "list"):
        assert (tmp_path / out / "train.bin").read_bytes() == (tmp_path / "one" / "train.bin").read_bytes()


def test_custom_bpe_vocabulary_is_trained_saved_and_deterministic(tmp_path, stories):
    txt = write_txt(tmp_path / "all.txt", stories)
    prepare(f"--input={txt}", "--vocab_size=300", f"--out_dir={tmp_path / 'a'}")
    prepare(f"--input={txt}", "--vocab_size=300", f"--out_dir={tmp_path / 'b'}", "--num_proc=1")
    meta, bins = load(tmp_path / "a")
    assert meta["vocab_size"] == 300 and meta["eot_id"] == 299 and meta["tokenizer"]["kind"] == "bpe"
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()
    assert json.load(open(tmp_path / "b" / "meta.json"))["tokenizer"] == meta["tokenizer"]
    enc = tokenizer.load_tokenizer(meta["tokenizer"])
    assert int(bins["train"].max()) == 299
    assert decode_stories(enc, bins["train"]) == [s for i, s in enumerate(stories) if (i + 1) % 20 != 0]


def test_download_path_reads_the_hf_train_and_validation_splits(tmp_path, stories, monkeypatch):
    import datasets
    import prepare as prepare_module
    splits = {"train": datasets.Dataset.from_dict({"text": stories[:150]}),
              "validation": datasets.Dataset.from_dict({"text": stories[150:]})}
    asked = []

    def load_dataset(name, split):
        asked.append((name, split))
        return splits[split]
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(prepare_module, "out_dir", str(tmp_path / "hf"))
    monkeypatch.setattr(prepare_module, "num_proc", 1)
    prepare_module.main([])
    assert asked == [("roneneldan/TinyStories", "train"), ("roneneldan/TinyStories", "validation")]
    prepare(f"--input={write_txt(tmp_path / 't.txt', stories[:150])}", f"--val_input={write_txt(tmp_path / 'v.txt', stories[150:])}",
            f"--out_dir={tmp_path / 'local'}")
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_rerun_with_same_inputs_gives_identical_output(tmp_path, stories):
    txt = write_txt(tmp_path / "all.txt", stories)
    prepare(f"--input={txt}", f"--out_dir={tmp_path / 'out'}")
    first = (tmp_path / "out" / "train.bin").read_bytes()
    prepare(f"--input={txt}", f"--out_dir={tmp_path / 'out'}")
    assert (tmp_path / "out" / "train.bin").read_bytes() == first
    assert sorted(os.listdir(tmp_path / "out")) == ["meta.json", "train.bin", "val.bin"]


@pytest.fixture
def good_out(tmp_path, stories):
    """A directory holding a good prepared dataset, which no failed run may touch."""
    out = tmp_path / "out"
    prepare(f"--input={write_txt(tmp_path / 'good.txt', stories)}", f"--out_dir={out}")
    return out, {name: (out / name).read_bytes() for name in os.listdir(out)}


def bad_input(tmp_path, case):
    if case == "missing file":
        return [f"--input={tmp_path / 'nope.txt'}"], "not found"
    if case == "unsupported extension":
        (tmp_path / "stories.csv").write_text("text\nhello\n")
        return [f"--input={tmp_path / 'stories.csv'}"], "unsupported extension"
    if case == "json without text":
        json.dump([{"body": "hello"}], open(tmp_path / "x.json", "w"))
        return [f"--input={tmp_path / 'x.json'}"], "no 'text' column"
    if case == "parquet without text":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"body": ["hello"]}), tmp_path / "x.parquet")
        return [f"--input={tmp_path / 'x.parquet'}"], "no 'text' column"
    if case == "empty corpus":
        (tmp_path / "empty.txt").write_text("\n<|endoftext|>\n  \n")
        return [f"--input={tmp_path / 'empty.txt'}"], "empty"
    if case == "empty val split":
        write_txt(tmp_path / "few.txt", ["one story", "two stories"])
        return [f"--input={tmp_path / 'few.txt'}", "--val_fraction=0.1"], "val split is empty"
    if case == "val_fraction 0":
        return [f"--input={tmp_path / 'good.txt'}", "--val_fraction=0"], "val_fraction"
    if case == "val_fraction 1.5":
        return [f"--input={tmp_path / 'good.txt'}", "--val_fraction=1.5"], "val_fraction"
    if case == "unknown key":
        return [f"--input={tmp_path / 'good.txt'}", "--vocab=4096"], "unknown key 'vocab'"
    if case == "vocab_size 256":
        return [f"--input={tmp_path / 'good.txt'}", "--vocab_size=256"], "vocab_size"
    if case == "vocab_size 65536":
        return [f"--input={tmp_path / 'good.txt'}", "--vocab_size=65536"], "vocab_size"
    if case == "wrong type":
        return [f"--input={tmp_path / 'good.txt'}", "--vocab_size=big"], "takes a int"


def test_a_failed_first_run_leaves_no_directory(tmp_path):
    write_txt(tmp_path / "empty.txt", [])
    assert_clean_error(run_script("prepare.py", f"--input={tmp_path / 'empty.txt'}", f"--out_dir={tmp_path / 'new'}"),
                       "empty")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("case", ["missing file", "unsupported extension", "json without text", "parquet without text",
                                  "empty corpus", "empty val split", "val_fraction 0", "val_fraction 1.5",
                                  "unknown key", "vocab_size 256", "vocab_size 65536", "wrong type"])
def test_bad_input_fails_with_one_line_and_leaves_good_data(tmp_path, good_out, case):
    out, before = good_out
    args, message = bad_input(tmp_path, case)
    assert_clean_error(run_script("prepare.py", *args, f"--out_dir={out}"), message)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
