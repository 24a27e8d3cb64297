"""Stories in, token streams out: the readers of raw story files, and the data_dir prepare.py writes.

Raw stories: .txt (stories separated by <|endoftext|> lines, the official layout), .json / .jsonl / .parquet
with a `text` column, the JSON shards of TinyStories_all_data.tar.gz (a `story` field), or a Hugging Face
dataset. A data_dir holds train.bin and val.bin (token ids, each story followed by <|endoftext|>) and
meta.json (the tokenizer spec, vocab_size, eot_id, the ids' dtype, and per split its stories, tokens and UTF-8
bytes, from which bits per byte are computed).
"""

import codecs
import glob
import json
import os

import numpy as np
import torch

import tokenizer
from configurator import UserError

EXTENSIONS = (".txt", ".json", ".jsonl", ".parquet")
BATCH_BYTES = 2 << 20  # text read at once from a .txt file
BATCH_STORIES = 2000  # stories per batch, from the other formats
SCAN_TOKENS = 1 << 24  # tokens of a .bin searched at once


class DataError(UserError):
    pass


# ----------------------------------------------------------------------------- raw stories


def expand_inputs(spec):
    """The files a comma-separated list of paths or globs names, checked before any work starts."""
    files = []
    for pattern in filter(None, (p.strip() for p in spec.split(","))):
        literal = not glob.has_magic(pattern) or os.path.lexists(pattern)  # a name with [ ] that exists
        matches = [pattern] if literal else sorted(glob.glob(pattern))
        if not matches:
            raise DataError(f"no file matches '{pattern}'")
        files += matches
    for path in files:
        if os.path.isdir(path):
            raise DataError(f"input '{path}' is a directory: name its files, e.g. --input='{path}/*.txt'")
        if not os.path.isfile(path):
            what = "is not a regular file" if os.path.exists(path) else "not found"
            raise DataError(f"input file '{path}' {what}")
        if not path.endswith(EXTENSIONS):
            raise DataError(f"'{path}' has an unsupported extension: use {', '.join(EXTENSIONS)}")
    return files


def record_text(record, path):
    for field in ("text", "story"):
        if isinstance(record, dict) and isinstance(record.get(field), str):
            return record[field]
    raise DataError(f"'{path}' has a record with no 'text' column (nor 'story' field): {str(record)[:80]}")


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
            raise DataError(f"'{path}' is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    if isinstance(data, dict):  # column-oriented: {"text": [...]}
        texts = data.get("text")
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise DataError(f"'{path}' has no 'text' column of strings")
        yield from batches(texts)
    elif isinstance(data, list):
        yield from batches(record_text(record, path) for record in data)
    else:
        raise DataError(f"'{path}' holds no records: expected a list of objects with a 'text' field")


def read_jsonl(path):
    def records():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    if line.strip():
                        yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"'{path}' line {number} is not valid JSON: {e.msg} at column {e.colno}")

    yield from batches(record_text(record, path) for record in records())


def read_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise DataError(f"'{path}' is not a readable parquet file ({e})")
    names = parquet.schema_arrow.names
    if "text" not in names:
        raise DataError(f"'{path}' has no 'text' column (columns: {', '.join(names)})")
    text_type = parquet.schema_arrow.field("text").type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise DataError(f"'{path}' has a 'text' column of {text_type}, not of strings")
    for batch in parquet.iter_batches(batch_size=BATCH_STORIES, columns=["text"]):
        if batch.column("text").null_count:
            raise DataError(f"'{path}' has a missing (null) 'text' value")
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
    """Batches of stories from files of any supported format, in order."""
    readers = {".txt": read_txt, ".json": read_json, ".jsonl": read_jsonl, ".parquet": read_parquet}
    for path in files:
        try:
            yield from readers[os.path.splitext(path)[1]](path)
        except UnicodeDecodeError:
            where = first_non_utf8_byte(path)
            detail = f" (byte 0x{where[0]:02x} at offset {where[1]})" if where else ""
            raise DataError(f"'{path}' is not UTF-8 text{detail}: convert it to UTF-8")
        except OSError as e:
            raise DataError(f"could not read '{path}': {e.strerror}")


def read_stories(files, limit=0):
    """The stories of comma-separated paths or globs: the first `limit` (0: all)."""
    stories = []
    for batch in read_files(expand_inputs(files)):
        stories += batch
        if limit and len(stories) >= limit:
            return stories[:limit]
    return stories


def read_hf(dataset, split):
    """The real download path: a Hugging Face dataset split's text column, in batches."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset, split=split)
    except Exception as e:  # offline, unknown name: say what to do instead of a long traceback
        raise DataError(
            f"could not load dataset '{dataset}' split '{split}' ({type(e).__name__}: {str(e)[:200]}). "
            "Offline? Pass local files with --input=PATH"
        )
    for batch in ds.iter(batch_size=BATCH_STORIES):
        yield batch["text"]


# ----------------------------------------------------------------------------- a prepared data_dir


def read_meta(directory):
    """meta.json of a prepare.py output directory, checked."""
    path = os.path.join(directory, "meta.json")
    if not os.path.isfile(path):
        raise DataError(
            f"data_dir '{directory}' has no meta.json: run prepare.py first (--out_dir={directory})"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        tokenizer.stored_spec(meta, path)
        if not isinstance(meta["eot_id"], int) or not isinstance(meta["vocab_size"], int):
            raise ValueError("eot_id and vocab_size must be integers")
        np.dtype(meta["dtype"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path} is damaged or not prepare.py's ({type(e).__name__}: {e}); run prepare.py again"
        )
    return meta


def split_path(directory, name):
    path = os.path.join(directory, f"{name}.bin")
    if not os.path.isfile(path):
        raise DataError(
            f"data_dir '{directory}' has no {name}.bin: run prepare.py first (--out_dir={directory})"
        )
    return path


def read_split(directory, meta, name):
    """The stories of a prepared split, one at a time: token arrays without the <|endoftext|> after each.

    The stream is searched for end-of-text a block at a time, so even a 470M-token split costs little memory.
    """
    path = split_path(directory, name)
    if os.path.getsize(path) == 0:
        return
    data = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
    start = 0
    for offset in range(0, len(data), SCAN_TOKENS):
        for end in (np.flatnonzero(data[offset : offset + SCAN_TOKENS] == meta["eot_id"]) + offset).tolist():
            yield data[start:end]
            start = end + 1


class TrainingData:
    """A data_dir opened for training, checked before the first step.

    Its .bin files stay open for the whole run, so a prepare.py that writes new ones meanwhile (it renames
    them into place) changes neither the run's data nor the bytes per token its bits per byte use. A batch
    maps the open file afresh (a long-lived memmap grows the process's memory: nanoGPT's finding).
    """

    def __init__(self, directory, block_size, device):
        self.directory, self.block_size, self.device = directory, block_size, device
        self.meta = read_meta(directory)
        self.dtype = np.dtype(self.meta["dtype"])
        self.files = {split: open(split_path(directory, split), "rb") for split in ("train", "val")}
        self.tokens = {
            split: os.fstat(f.fileno()).st_size // self.dtype.itemsize for split, f in self.files.items()
        }
        val = self.meta.get("val") or {}
        if (
            not 0 < val.get("tokens", 0) <= val.get("bytes", 0) + val.get("stories", 0)
        ):  # each token >= 1 byte
            raise DataError(
                f"{directory}/meta.json's val counts are missing or impossible ({val}); run prepare.py again"
            )
        self.bytes_per_token = val["bytes"] / val["tokens"]
        for split, n in self.tokens.items():
            if n <= block_size:
                raise DataError(
                    f"block_size={block_size} is larger than {split}.bin in {directory} ({n} tokens): "
                    "use a smaller --block_size or more data"
                )
            largest = max(int(chunk.max()) for _, chunk in self.chunks(split))
            if largest >= self.meta["vocab_size"]:
                raise DataError(
                    f"{split}.bin in {directory} holds token id {largest}, but meta.json's vocab_size is "
                    f"{self.meta['vocab_size']}: the files do not belong together; run prepare.py again"
                )
        # where each story's <|endoftext|> opens a whole window of train.bin: windows that start there read
        # stories from their beginning, as eval.py does
        eot = [np.flatnonzero(chunk == self.meta["eot_id"]) + at for at, chunk in self.chunks("train")]
        starts = np.concatenate(eot)
        self.story_starts = starts[starts + block_size + 1 <= self.tokens["train"]]

    def check_vocabulary(self, source, spec, vocab_size):
        """DataError unless a model's tokenizer (spec, vocab_size, from source) is the one of these tokens."""
        if spec != self.meta["tokenizer"] or vocab_size != self.meta["vocab_size"]:
            theirs = f"{vocab_size}-id {tokenizer.spec_kind(spec)}"
            ours = f"{self.meta['vocab_size']}-id {tokenizer.spec_kind(self.meta['tokenizer'])}"
            raise DataError(
                f"vocabulary mismatch: {source} uses a {theirs} tokenizer, but {self.directory} holds {ours} "
                "tokens; prepare the data with the same tokenizer"
            )

    def array(self, split):
        return np.memmap(self.files[split], dtype=self.dtype, mode="r")

    def chunks(self, split):
        """(offset, tokens) a block at a time, so that a 470M-token split never needs its own copy."""
        data = self.array(split)
        return ((i, data[i : i + SCAN_TOKENS]) for i in range(0, len(data), SCAN_TOKENS))

    def windows(self, split, starts):
        """Inputs and next-token targets of block_size windows at these offsets, on the device, not waited
        for."""
        rows = self.array(split)[np.asarray(starts)[:, None] + np.arange(self.block_size + 1)]
        rows = torch.from_numpy(rows.astype(np.int64))
        if self.device.startswith("cuda"):
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        else:
            rows = rows.to(self.device)
        return rows[:, :-1], rows[:, 1:]
