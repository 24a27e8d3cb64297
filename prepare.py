"""Tokenize TinyStories into flat uint16 token streams: OUT_DIR/train.bin, val.bin and meta.json.

  python prepare.py                                   # download roneneldan/TinyStories (needs internet)
  python prepare.py --input=TinyStories-train.txt --val_input=TinyStories-valid.txt
  python prepare.py --input='data/*.jsonl' --val_fraction=0.05 --vocab_size=4096

Every story is followed by <|endoftext|>. Local inputs may be .txt (stories separated by <|endoftext|>
lines, the official layout), .json / .jsonl / .parquet with a `text` column, or the JSON shards of
TinyStories_all_data.tar.gz (a `story` field). Outputs are written under temporary names and renamed
at the end, so a failed run never replaces good data.
"""

import codecs
import glob
import json
import os
from collections import Counter, deque
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

import tokenizer
from configurator import configure, fail

# -----------------------------------------------------------------------------
input = ""  # local files: paths or globs, comma-separated; empty: download `dataset`
val_input = ""  # local validation files; empty: hold out val_fraction of `input`
val_fraction = 0.05  # share of `input` stories held out for validation (every 1/val_fraction-th story)
dataset = "roneneldan/TinyStories"  # Hugging Face dataset with train/validation splits and a text column
out_dir = "data/tinystories"
vocab_size = 0  # 0: GPT-2's tokenizer; N: train a byte-level BPE with N ids on the train split
num_proc = os.cpu_count()
# -----------------------------------------------------------------------------
BATCH_BYTES = 2 << 20  # text per job sent to a worker, from .txt files
BATCH_STORIES = 2000  # stories per job, from the other formats
EXTENSIONS = (".txt", ".json", ".jsonl", ".parquet")


class PrepareError(Exception):
    """Bad input or options: main() reports it with one line."""


def expand_inputs(spec):
    """The files a comma-separated list of paths or globs names, checked before any work starts."""
    files = []
    for pattern in filter(None, (p.strip() for p in spec.split(","))):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise PrepareError(f"no file matches '{pattern}'")
        files += matches
    for path in files:
        if os.path.isdir(path):
            raise PrepareError(f"input '{path}' is a directory: name its files, e.g. --input='{path}/*.txt'")
        if not os.path.isfile(path):
            raise PrepareError(f"input file '{path}' not found")
        if not path.endswith(EXTENSIONS):
            raise PrepareError(f"'{path}' has an unsupported extension: use {', '.join(EXTENSIONS)}")
    return files


def record_text(record, path):
    for field in ("text", "story"):
        if isinstance(record, dict) and isinstance(record.get(field), str):
            return record[field]
    raise PrepareError(f"'{path}' has a record with no 'text' column (nor 'story' field): {str(record)[:80]}")


def batches(texts, size=BATCH_STORIES):
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_txt(path):
    """Stories of the official layout, split on <|endoftext|> a block at a time."""
    rest = ""
    with open(path, encoding="utf-8") as f:
        while block := f.read(BATCH_BYTES):
            *stories, rest = (rest + block).split(tokenizer.EOT)
            yield [s.strip() for s in stories if s.strip()]
    if rest.strip():
        yield [rest.strip()]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # JSON lines saved as .json, as datasets' to_json writes them
                yield from read_jsonl(path)
                return
            raise PrepareError(f"'{path}' is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    if isinstance(data, dict):  # column-oriented: {"text": [...]}
        texts = data.get("text")
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise PrepareError(f"'{path}' has no 'text' column of strings")
        yield from batches(texts)
    elif isinstance(data, list):
        yield from batches(record_text(record, path) for record in data)
    else:
        raise PrepareError(f"'{path}' holds no records: expected a list of objects with a 'text' field")


def jsonl_records(path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise PrepareError(
                        f"'{path}' line {number} is not valid JSON: {e.msg} at column {e.colno}"
                    )


def read_jsonl(path):
    yield from batches(record_text(record, path) for record in jsonl_records(path))


def read_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise PrepareError(f"'{path}' is not a readable parquet file ({e})")
    if "text" not in parquet.schema_arrow.names:
        raise PrepareError(
            f"'{path}' has no 'text' column (columns: {', '.join(parquet.schema_arrow.names)})"
        )
    text_type = parquet.schema_arrow.field("text").type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise PrepareError(f"'{path}' has a 'text' column of {text_type}, not of strings")
    for batch in parquet.iter_batches(batch_size=BATCH_STORIES, columns=["text"]):
        if batch.column("text").null_count:
            raise PrepareError(f"'{path}' has a missing (null) 'text' value")
        yield batch.column("text").to_pylist()


def first_non_utf8_byte(path):
    """(byte, offset) where path stops being UTF-8 text, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(BATCH_BYTES)
            pending = len(decoder.getstate()[0])  # the start of a character split across blocks
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                return e.object[e.start], offset - pending + e.start
            if not block:
                return None
            offset += len(block)


def read_files(files):
    readers = {".txt": read_txt, ".json": read_json, ".jsonl": read_jsonl, ".parquet": read_parquet}
    for path in files:
        try:
            yield from readers[os.path.splitext(path)[1]](path)
        except UnicodeDecodeError:
            where = first_non_utf8_byte(path)
            detail = f" (byte 0x{where[0]:02x} at offset {where[1]})" if where else ""
            raise PrepareError(f"'{path}' is not UTF-8 text{detail}: convert it to UTF-8")
        except OSError as e:
            raise PrepareError(f"could not read '{path}': {e.strerror}")


def read_hf(split):
    """The real download path: a Hugging Face dataset split's text column, in batches."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset, split=split)
    except Exception as e:  # offline, unknown name: say what to do instead of a long traceback
        raise PrepareError(
            f"could not load dataset '{dataset}' split '{split}' "
            f"({type(e).__name__}: {str(e)[:200]}). Offline? Pass local files with --input=PATH"
        )
    for batch in ds.iter(batch_size=BATCH_STORIES):
        yield batch["text"]


def plan():
    """(batches of stories, val_fraction) for each source: 0 sends all to train, 1 all to val."""
    if not input:
        return [(read_hf("train"), 0.0), (read_hf("validation"), 1.0)]
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


def init_worker(spec):
    global _encoding
    _encoding = tokenizer.load_tokenizer(spec)


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
    with Pool(num_proc) as pool, tqdm(desc="counting pre-tokens", unit=" stories") as progress:
        for part, n_stories in run_ordered(pool, count_job, numbered(plan()), 2 * num_proc):
            counts.update(part)
            progress.update(n_stories)
    if not counts:
        raise PrepareError("the corpus is empty: no training stories found")
    print(f"training a {vocab_size}-id BPE on {len(counts):,} distinct pre-tokens...")
    ranks = tokenizer.train_bpe(counts, vocab_size)
    if len(ranks) + 1 < vocab_size:
        print(f"warning: the corpus allows only {len(ranks) + 1} ids, fewer than vocab_size={vocab_size}")
    return tokenizer.bpe_spec(ranks)


def write_splits(spec):
    """Streams the token ids into OUT_DIR/{train,val}.bin.tmp; returns each split's counts."""
    stats = {split: {"stories": 0, "tokens": 0, "bytes": 0} for split in ("train", "val")}
    with (
        open(os.path.join(out_dir, "train.bin.tmp"), "wb") as train_file,
        open(os.path.join(out_dir, "val.bin.tmp"), "wb") as val_file,
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


def remove_temporary_files(outputs):
    for path in outputs:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")


def prepare_dataset():
    if not 0 < val_fraction < 1:
        raise PrepareError(f"--val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    if val_fraction > 0.5:  # then the train split gets fewer stories than the val split
        raise PrepareError(
            f"--val_fraction={val_fraction} holds out more stories than it leaves for training: "
            "use a smaller --val_fraction (at most 0.5; the default is 0.05)"
        )
    if vocab_size != 0 and not 257 <= vocab_size <= tokenizer.MAX_VOCAB:
        raise PrepareError(
            f"--vocab_size={vocab_size} is out of range: use 0 for GPT-2's tokenizer, or 257 to "
            f"{tokenizer.MAX_VOCAB} (256 bytes plus <|endoftext|>; ids are stored as uint16)"
        )
    if num_proc < 1:
        raise PrepareError(f"--num_proc={num_proc} must be at least 1")
    if input:
        expand_inputs(input)
        expand_inputs(val_input)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PrepareError(f"--out_dir={out_dir} is a file, not a directory: choose another --out_dir")
    created = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise PrepareError(f"cannot create --out_dir={out_dir}: {e.strerror}")
    outputs = [os.path.join(out_dir, name) for name in ("train.bin", "val.bin", "meta.json")]
    remove_temporary_files(outputs)  # a killed run's leftovers: free their space before writing
    try:
        spec = train_tokenizer() if vocab_size else tokenizer.gpt2_spec()
        encoding = tokenizer.load_tokenizer(spec)
        stats = write_splits(spec)
        for split, counts in stats.items():
            if counts["stories"] == 0:
                hint = (
                    "use more stories or a larger --val_fraction"
                    if split == "val" and input and not val_input
                    else "check the input files"
                )
                raise PrepareError(f"the {split} split is empty: no stories found ({hint})")
        meta = {
            "tokenizer": spec,
            "vocab_size": encoding.n_vocab,
            "eot_id": encoding.eot_token,
            "dtype": "uint16",
            **stats,
        }
        with open(outputs[2] + ".tmp", "w") as f:
            json.dump(meta, f, indent=1)
        for path in outputs:
            os.replace(path + ".tmp", path)
    except OSError as e:  # a full disk: the old files are still there, the new ones are removed below
        raise PrepareError(
            f"could not write the dataset to {out_dir}: {e.strerror}; nothing there was replaced"
        )
    finally:
        remove_temporary_files(outputs)
        if created and not os.listdir(out_dir):  # a failed first run leaves nothing behind
            os.rmdir(out_dir)
    for split in ("train", "val"):
        s = stats[split]
        print(
            f"{split}: {s['stories']:,} stories, {s['tokens']:,} tokens, {s['bytes']:,} bytes "
            f"({s['bytes'] / s['tokens']:.2f} bytes/token) -> {os.path.join(out_dir, split + '.bin')}"
        )
    print(
        f"tokenizer: {tokenizer.spec_kind(spec)}, vocab_size {encoding.n_vocab}, end-of-text id {encoding.eot_token}"
    )


def main(argv=None):
    """The command line: options, then the dataset; a mistake ends in one line, after the progress bars close."""
    configure(globals(), argv)
    try:
        prepare_dataset()
    except (PrepareError, tokenizer.TokenizerError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
