import json
import random
import shutil
from collections import Counter

import pytest
from conftest import make_stories

import tokenizer


@pytest.fixture(scope="module")
def gpt2():
    return tokenizer.gpt2_encoding()


def test_gpt2_ids_are_tiktokens(gpt2):
    # ids tiktoken.get_encoding("gpt2") gives for these strings
    assert gpt2.encode_ordinary("Hello world") == [15496, 995]
    assert gpt2.encode_ordinary("Once upon a time") == [7454, 2402, 257, 640]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.n_vocab == 50257 and gpt2.eot_token == 50256


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_gpt2_files_are_checked_against_tiktokens_hashes(tmp_path, name):
    for path in tokenizer.gpt2_files():
        shutil.copy(path, tmp_path)
    assert tokenizer.gpt2_files(str(tmp_path)) == (
        str(tmp_path / "vocab.bpe"),
        str(tmp_path / "encoder.json"),
    )
    data = bytearray((tmp_path / name).read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one byte
    (tmp_path / name).write_bytes(data)
    with pytest.raises(tokenizer.TokenizerError, match=f"{name} is not GPT-2's file \\(sha256 mismatch\\)"):
        tokenizer.gpt2_files(str(tmp_path))


def test_a_missing_gpt2_file_is_named(tmp_path):
    with pytest.raises(tokenizer.TokenizerError, match="cannot read GPT-2's file .*vocab.bpe"):
        tokenizer.gpt2_files(str(tmp_path))


@pytest.mark.parametrize("kind", ["gpt2", "bpe"])
def test_decode_encode_round_trips_every_story(kind, gpt2):
    stories = make_stories(100) + ["  leading and trailing spaces  ", "tabs\tand\r\nCRLF", "日本語 🙂🙂", ""]
    enc = (
        gpt2
        if kind == "gpt2"
        else tokenizer.bpe_encoding(tokenizer.train_bpe(tokenizer.count_pretokens(stories), 300))
    )
    for story in stories:
        assert enc.decode(enc.encode_ordinary(story)) == story


def test_bpe_is_deterministic_and_independent_of_count_order():
    counts = tokenizer.count_pretokens(make_stories(100))
    items = list(counts.items())
    random.Random(1).shuffle(items)
    first = tokenizer.train_bpe(counts, 400)
    assert tokenizer.train_bpe(Counter(dict(items)), 400) == first
    assert len(first) == 399  # plus <|endoftext|> makes 400 ids
    assert sorted(first.values()) == list(range(399))


def test_bpe_compresses_the_text_it_was_trained_on():
    stories = make_stories(100)
    enc = tokenizer.bpe_encoding(tokenizer.train_bpe(tokenizer.count_pretokens(stories), 400))
    n_bytes = sum(len(s.encode()) for s in stories)
    assert sum(len(enc.encode_ordinary(s)) for s in stories) < n_bytes / 2.5
    assert enc.n_vocab == 400 and enc.eot_token == 399


def test_bpe_spec_round_trips_through_json():
    ranks = tokenizer.train_bpe(tokenizer.count_pretokens(make_stories(20)), 400)
    spec = json.loads(json.dumps(tokenizer.bpe_spec(ranks)))  # as meta.json and checkpoints store it
    assert tokenizer.spec_kind(spec) == "bpe"
    assert tokenizer.spec_ranks(spec) == ranks
    assert tokenizer.load_tokenizer(spec).encode_ordinary("Lily and Max") == tokenizer.bpe_encoding(
        ranks
    ).encode_ordinary("Lily and Max")


def test_gpt2_spec_loads_gpt2(gpt2):
    assert tokenizer.spec_kind(tokenizer.gpt2_spec()) == "gpt2"
    assert tokenizer.load_tokenizer(tokenizer.gpt2_spec()) is gpt2


def test_a_stored_spec_is_read_from_meta_or_a_checkpoint():
    assert (
        tokenizer.stored_spec({"tokenizer": tokenizer.gpt2_spec(), "vocab_size": 50257}, "meta.json")
        == tokenizer.gpt2_spec()
    )
    with pytest.raises(tokenizer.TokenizerError, match="out/ckpt.pt holds no tokenizer spec"):
        tokenizer.stored_spec({"model": {}, "iter_num": 3}, "out/ckpt.pt")


@pytest.mark.parametrize("vocab_size", [256, 65536])
def test_vocabulary_that_does_not_fit_uint16_or_bytes_is_refused(vocab_size):
    with pytest.raises(tokenizer.TokenizerError, match="out of range"):
        tokenizer.train_bpe(Counter({"a": 1}), vocab_size)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "sentencepiece"}, "unknown tokenizer kind 'sentencepiece'"),
        ({"tokenizer": {"kind": "gpt2"}}, "not a tokenizer spec"),
        (None, "not a tokenizer spec"),
        ({"kind": "bpe"}, "bpe tokenizer spec has no 'ranks'"),
        ({"kind": "bpe", "ranks": "not base64 at all\n"}, "'ranks' are not 'base64 rank' lines"),
    ],
)
def test_a_spec_that_is_not_one_is_refused(spec, message):
    with pytest.raises(tokenizer.TokenizerError, match=message):
        tokenizer.load_tokenizer(spec)


def test_only_a_bpe_spec_has_ranks():
    with pytest.raises(tokenizer.TokenizerError, match="a gpt2 tokenizer spec has no ranks"):
        tokenizer.spec_ranks(tokenizer.gpt2_spec())
