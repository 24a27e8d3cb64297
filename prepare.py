"""Tokenize TinyStories into flat uint16 token streams: OUT_DIR/train.bin, val.bin and meta.json.

  python prepare.py                                   # download roneneldan/TinyStories (needs internet)
  python prepare.py --input=TinyStories-train.txt --val_input=TinyStories-valid.txt
  python prepare.py --input='data/*.jsonl' --val_fraction=0.05 --vocab_size=4096

Every story is followed by <|endoftext|>. Local inputs may be .txt (stories separated by <|endoftext|> lines,
the official layout), .json / .jsonl / .parquet with a `text` column, or the JSON shards of
TinyStories_all_data.tar.gz (a `story` field). Outputs are written under temporary names and renamed at the
end, so a failed or interrupted run never replaces good data.
"""

import json
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

import tokenizer
from configurator import configure
from data import DataError, expand_inputs, read_files, read_hf

# -----------------------------------------------------------------------------
input = ""  # local files: paths or globs, comma-separated; empty: download `dataset`
val_input = ""  # local validation files; empty: hold out val_fraction of `input`
val_fraction = 0.05  # share of `input` stories held out for validation (every 1/val_fraction-th story)
dataset = "roneneldan/TinyStories"  # Hugging Face dataset with train/validation splits and a text column
out_dir = "data/tinystories"
vocab_size = 0  # 0: GPT-2's tokenizer; N: train a byte-level BPE with N ids on the train split
num_proc = os.cpu_count()
# -----------------------------------------------------------------------------


def plan():
    """(batches of stories, val_fraction) for each source: 0 sends all to train, 1 all to val."""
    if not input:
        return [(read_hf(dataset, "train"), 0.0), (read_hf(dataset, "validation"), 1.0)]
    if val_input:
        return [(read_files(expand_inputs(input)), 0.0), (read_files(expand_inputs(val_input)), 1.0)]
    return [(read_files(expand_inputs(input)), val_fraction)]


def numbered(plan):
    """Jobs (stories, index of the first story in its source, val_fraction) in order."""
    for source, fraction in plan:
        first = 0
        for stories in source:
            yield stories, first, fraction
            first += len(stories)


def split_stories(stories, first, fraction):
    """(train, val) stories; story i of a source goes to val when floor((i+1)*f) > floor(i*f)."""
    train, val = [], []
    for i, story in enumerate(stories, first):
        (val if int((i + 1) * fraction) > int(i * fraction) else train).append(story)
    return train, val


_encoding = None


def init_worker(spec=None):
    """A worker leaves Ctrl-C to the main process, which stops them all and cleans up."""
    global _encoding
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _encoding = tokenizer.load_tokenizer(spec) if spec else None


def encode_job(stories, first, fraction):
    """Per split: the token stream (each story then <|endoftext|>), and its stories, tokens and bytes."""
    out = []
    for part in split_stories(stories, first, fraction):
        text = "".join(story + tokenizer.EOT for story in part)
        ids = _encoding.encode_to_numpy(text, allowed_special={tokenizer.EOT}).astype(np.uint16)
        out.append((ids, len(part), len(text.encode("utf-8")) - len(part) * len(tokenizer.EOT)))
    return out


def count_job(stories, first, fraction):
    """The pre-token counts of the job's train stories, and how many stories that is."""
    train = split_stories(stories, first, fraction)[0]
    return tokenizer.count_pretokens(train), len(train)


def run_ordered(pool, fn, jobs, window):
    """pool.imap without its unbounded read-ahead: at most `window` jobs in memory at once."""
    pending = deque()
    for job in jobs:
        pending.append(pool.apply_async(fn, job))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def train_tokenizer():
    counts = Counter()
    with (
        Pool(num_proc, initializer=init_worker) as pool,
        tqdm(desc="counting pre-tokens", unit=" stories") as bar,
    ):
        for part, n_stories in run_ordered(pool, count_job, numbered(plan()), 2 * num_proc):
            counts.update(part)
            bar.update(n_stories)
    if not counts:
        raise DataError("the corpus is empty: no training stories found")
    print(f"training a {vocab_size}-id BPE on {len(counts):,} distinct pre-tokens...")
    ranks = tokenizer.train_bpe(counts, vocab_size)
    if len(ranks) + 1 < vocab_size:
        print(f"warning: the corpus allows only {len(ranks) + 1} ids, fewer than vocab_size={vocab_size}")
    return tokenizer.bpe_spec(ranks)


def write_splits(spec, paths):
    """Streams the token ids into the temporary files paths["train"], paths["val"]; each split's counts."""
    stats = {split: {"stories": 0, "tokens": 0, "bytes": 0} for split in ("train", "val")}
    with (
        open(paths["train"], "wb") as train_file,
        open(paths["val"], "wb") as val_file,
        Pool(num_proc, initializer=init_worker, initargs=(spec,)) as pool,
        tqdm(desc="tokenizing", unit="B", unit_scale=True) as progress,
    ):
        for result in run_ordered(pool, encode_job, numbered(plan()), 2 * num_proc):
            for counts, split_file, (ids, n_stories, n_bytes) in zip(
                stats.values(), (train_file, val_file), result
            ):
                split_file.write(ids.tobytes())
                counts["stories"] += n_stories
                counts["tokens"] += len(ids)
                counts["bytes"] += n_bytes
                progress.update(n_bytes)
    return stats


def prepare():
    """The dataset, written under temporary names and renamed into place only when it is whole."""
    if val_fraction > 0.5:  # then the train split gets fewer stories than the val split
        raise DataError(
            f"--val_fraction={val_fraction} holds out more stories than it leaves for training: "
            "use a smaller --val_fraction (at most 0.5; the default is 0.05)"
        )
    if input:
        expand_inputs(input)
        expand_inputs(val_input)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"--out_dir={out_dir} is a file, not a directory: choose another --out_dir")
    created = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create --out_dir={out_dir}: {e.strerror}")
    final = {name: os.path.join(out_dir, name) for name in ("train.bin", "val.bin", "meta.json")}
    tmp = {name: path + ".tmp" for name, path in final.items()}

    def remove_partial():
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        if created and not os.listdir(out_dir):  # a failed first run leaves nothing behind
            os.rmdir(out_dir)

    def stop_at_once(signum, frame):
        """Ctrl-C. A pool's worker stopped while it holds the pool's queue lock makes terminating the pool
        wait forever, so this cleans up, kills the workers and ends the process itself."""
        remove_partial()
        for child in multiprocessing.active_children():
            child.kill()
        print(f"\nerror: interrupted; nothing in {out_dir} was replaced", file=sys.stderr, flush=True)
        os._exit(1)

    signal.signal(signal.SIGINT, stop_at_once)
    try:
        for path in tmp.values():  # a killed run's leftovers: free their space before writing
            if os.path.exists(path):
                os.remove(path)
        spec = train_tokenizer() if vocab_size else tokenizer.gpt2_spec()
        encoding = tokenizer.load_tokenizer(spec)
        stats = write_splits(spec, {"train": tmp["train.bin"], "val": tmp["val.bin"]})
        for split, counts in stats.items():
            if counts["stories"] == 0:
                fewer = split == "val" and input and not val_input
                hint = "use more stories or a larger --val_fraction" if fewer else "check the input files"
                raise DataError(f"the {split} split is empty: no stories found ({hint})")
        meta = {
            "tokenizer": spec,
            "vocab_size": encoding.n_vocab,
            "eot_id": encoding.eot_token,
            "dtype": "uint16",
        }
        with open(tmp["meta.json"], "w") as f:
            json.dump({**meta, **stats}, f, indent=1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the three renames are not split by a Ctrl-C
        for name, path in final.items():
            os.replace(tmp[name], path)
    except OSError as e:  # a full disk: the old files are still there, the new ones are removed below
        raise DataError(f"could not write the dataset to {out_dir}: {e.strerror}; nothing there was replaced")
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        remove_partial()
    for split in ("train", "val"):
        s = stats[split]
        print(
            f"{split}: {s['stories']:,} stories, {s['tokens']:,} tokens, {s['bytes']:,} bytes "
            f"({s['bytes'] / s['tokens']:.2f} bytes/token) -> {final[split + '.bin']}"
        )
    print(
        f"tokenizer: {tokenizer.spec_kind(spec)}, vocab_size {encoding.n_vocab}, end-of-text id "
        f"{encoding.eot_token}"
    )


# multiprocessing starts its workers (on macOS and Windows) by importing this file: only the main process runs
if __name__ == "__main__":
    checks = {"val_fraction": "(0, 1)", "vocab_size": f"[0, {tokenizer.MAX_VOCAB}]", "num_proc": "[1, inf)"}
    configure(globals(), checks=checks)
    if 0 < vocab_size < 257:
        raise DataError(
            f"--vocab_size={vocab_size}: use 0 for GPT-2's tokenizer, or 257 to {tokenizer.MAX_VOCAB}"
        )
    prepare()
