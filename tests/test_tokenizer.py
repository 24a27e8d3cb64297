import random
from collections import Counter

import pytest

import tokenizer
from conftest import make_stories


@pytest.fixture(scope="module")
def gpt2():
    return tokenizer.gpt2_encoding()


def test_gpt2_ids_are_tiktokens(gpt2):
    # ids tiktoken.get_encoding("gpt2") gives for these strings
    assert gpt2.encode_ordinary("Hello world") == [15496, 995]
    assert gpt2.encode_ordinary("Once upon a time") == [7454, 2402, 257, 640]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.n_vocab == 50257 and gpt2.eot_token == 50256


def test_gpt2_files_are_checked_against_tiktokens_hashes():
    import hashlib
    vocab_bpe, encoder_json = tokenizer.gpt2_files()
    assert hashlib.sha256(open(vocab_bpe, "rb").read()).hexdigest().startswith("1ce1664773c50f3e")
    assert hashlib.sha256(open(encoder_json, "rb").read()).hexdigest().startswith("196139668be63f3b")


@pytest.mark.parametrize("kind", ["gpt2", "bpe"])
def test_decode_encode_round_trips_every_story(kind, gpt2):
    stories = make_stories(100) + ["  leading and trailing spaces  ", "tabs\tand\r\nCRLF", "日本語 🙂🙂", ""]
    enc = gpt2 if kind == "gpt2" else tokenizer.bpe_encoding(tokenizer.train_bpe(tokenizer.count_pretokens(stories), 300))
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


def test_bpe_spec_round_trips_through_text():
    ranks = tokenizer.train_bpe(tokenizer.count_pretokens(make_stories(20)), 400)
    spec = {"kind": "bpe", "ranks": tokenizer.ranks_to_text(ranks)}
    assert tokenizer.text_to_ranks(spec["ranks"]) == ranks
    assert tokenizer.load_tokenizer(spec).encode_ordinary("Lily and Max") == \
        tokenizer.bpe_encoding(ranks).encode_ordinary("Lily and Max")


@pytest.mark.parametrize("vocab_size", [256, 65536])
def test_vocabulary_that_does_not_fit_uint16_or_bytes_is_refused(vocab_size):
    with pytest.raises(tokenizer.TokenizerError, match="out of range"):
        tokenizer.train_bpe(Counter({"a": 1}), vocab_size)


def test_unknown_tokenizer_kind_is_refused():
    with pytest.raises(tokenizer.TokenizerError, match="unknown tokenizer kind"):
        tokenizer.load_tokenizer({"kind": "sentencepiece"})
