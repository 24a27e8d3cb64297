import copy
import json
import math
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_clean_error, make_stories, run_in_process, run_script, write_txt

import tokenizer
from checkpoint import save_checkpoint
from fastdecode import prepare_for_decoding
from generate import stream
from hf import export_hf
from metrics import OPENINGS, longest_copy, story_figures
from model import Llama, ModelConfig

CONTEXT = 32  # the tiny model's max_seq_len: most test stories are longer, so they are read in windows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """prepare.py's 300-id BPE data (val: 6 known stories) and a random tiny Llama on it, saved as train.py
    would."""
    tmp = tmp_path_factory.mktemp("eval")
    val = make_stories(6, seed=1) + ["Hi.", "café 🙂 naïve"]  # short ones and non-ASCII bytes too
    prep = run_script(
        "prepare.py",
        f"--input={write_txt(tmp / 'train.txt', make_stories(60))}",
        f"--val_input={write_txt(tmp / 'val.txt', val)}",
        "--vocab_size=300",
        f"--out_dir={tmp / 'data'}",
        "--num_proc=1",
    )
    assert prep.returncode == 0, prep.stderr
    meta = json.load(open(tmp / "data" / "meta.json"))
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=meta["vocab_size"], max_seq_len=CONTEXT
    )
    model = Llama(cfg).eval()
    checkpoint = {
        "model_args": asdict(cfg),
        "model": model.state_dict(),
        "tokenizer": meta["tokenizer"],
        "iter_num": 0,
        "config": {"data_dir": str(tmp / "data")},
    }
    (tmp / "out").mkdir()
    save_checkpoint(checkpoint, str(tmp / "out" / "ckpt.pt"))
    return {
        "tmp": tmp,
        "model": model,
        "checkpoint": checkpoint,
        "val": val,
        "meta": meta,
        "enc": tokenizer.load_tokenizer(meta["tokenizer"]),
    }


def evaluate(tmp_path, *args):
    """eval.py run in this process; the figures it wrote with --output."""
    result = run_in_process("eval.py", "--samples=0", f"--output={tmp_path / 'eval.json'}", *args)
    assert result.returncode == 0, result.stderr
    return json.load(open(tmp_path / "eval.json"))


def reference_nll(model, ids, window):
    """-log p of ids[1:], position by position, from full-forward logits of the context each position is
    given:
    the first window reads positions 0..window-1, later windows end every window/2 positions, and a position
    is
    scored in the first window that ends after it, which reads back `window` tokens from its end."""
    total, n, cached = 0.0, len(ids) - 1, {}
    for p in range(n):
        end = min(
            window if p < window else window + math.ceil((p + 1 - window) / (window // 2)) * (window // 2), n
        )
        begin = max(0, end - window)
        if begin not in cached:
            with torch.no_grad():
                cached[begin] = model.lm_head(model.hidden(torch.tensor([ids[begin:end]])))[0].double()
        total -= F.log_softmax(cached[begin][p - begin], dim=-1)[ids[p + 1]].item()
    return total


def test_every_token_scored_once_equals_a_hand_written_sum_of_log_probs(run, tmp_path):
    figures = evaluate(tmp_path, f"--out_dir={run['tmp'] / 'out'}", f"--input={run['tmp'] / 'val.txt'}")["lm"]
    enc = run["enc"]
    stories = [[enc.eot_token, *enc.encode_ordinary(s), enc.eot_token] for s in run["val"]]
    assert max(map(len, stories)) > 3 * CONTEXT  # several windows for the longest
    nll = sum(reference_nll(run["model"], ids, CONTEXT) for ids in stories)
    tokens = sum(len(ids) - 1 for ids in stories)  # each story's tokens and its closing end-of-text
    n_bytes = sum(len(s.encode("utf-8")) for s in run["val"])
    assert (figures["tokens"], figures["bytes"], figures["stories"]) == (tokens, n_bytes, len(run["val"]))
    assert figures["loss"] == pytest.approx(nll / tokens, rel=1e-6)
    assert figures["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert figures["bpb"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-6)


def test_the_checkpoints_data_dir_is_scored_as_its_raw_stories_and_counted_as_meta_json(run, tmp_path):
    prepared = evaluate(
        tmp_path, f"--out_dir={run['tmp'] / 'out'}"
    )  # no text given: the checkpoint's data, val
    raw = evaluate(tmp_path, f"--out_dir={run['tmp'] / 'out'}", f"--input={run['tmp'] / 'val.txt'}")
    assert prepared["text"] == {
        "source": f"{run['tmp'] / 'data'} val",
        "data_dir": str(run["tmp"] / "data"),
        "split": "val",
    }
    assert prepared["lm"]["tokens"] == run["meta"]["val"]["tokens"]
    assert prepared["lm"]["bytes"] == run["meta"]["val"]["bytes"]
    assert prepared["lm"]["loss"] == pytest.approx(raw["lm"]["loss"], rel=1e-6)
    assert prepared["lm"]["bpb"] == pytest.approx(raw["lm"]["bpb"], rel=1e-6)


def test_the_batch_size_does_not_change_the_figures(run, tmp_path):
    one, eight = (
        evaluate(tmp_path, f"--out_dir={run['tmp'] / 'out'}", f"--batch_size={b}")["lm"] for b in (1, 8)
    )
    for key in ("loss", "perplexity", "bpb"):
        assert one[key] == pytest.approx(eight[key], rel=1e-6, abs=1e-6)


def test_quantize_scores_the_model_as_sample_py_decodes_it(run, tmp_path):
    """--quantize=int8 scores the quantized matrices (the figure is their own hand-written sum, not
    fp32's)."""
    args = (f"--out_dir={run['tmp'] / 'out'}", f"--input={run['tmp'] / 'val.txt'}")
    exact, int8 = evaluate(tmp_path, *args)["lm"], evaluate(tmp_path, *args, "--quantize=int8")["lm"]
    model = prepare_for_decoding(copy.deepcopy(run["model"]), "int8")
    enc = run["enc"]
    nll = sum(
        reference_nll(model, [enc.eot_token, *enc.encode_ordinary(s), enc.eot_token], CONTEXT)
        for s in run["val"]
    )
    assert int8["bpb"] == pytest.approx(nll / math.log(2) / int8["bytes"], rel=1e-8)
    assert int8["bpb"] != exact["bpb"] and int8["bpb"] == pytest.approx(exact["bpb"], rel=0.01)


def test_max_stories_scores_the_first_stories(run, tmp_path):
    first_two = evaluate(tmp_path, f"--out_dir={run['tmp'] / 'out'}", "--max_stories=2")["lm"]
    raw = evaluate(
        tmp_path, f"--out_dir={run['tmp'] / 'out'}", f"--input={run['tmp'] / 'val.txt'}", "--max_stories=2"
    )["lm"]
    assert first_two["stories"] == raw["stories"] == 2
    assert first_two["bytes"] == raw["bytes"] == sum(len(s.encode()) for s in run["val"][:2])
    assert first_two["loss"] == pytest.approx(raw["loss"], rel=1e-6)


def test_a_checkpoint_and_its_hugging_face_export_give_the_same_bpb(run, tmp_path):
    export_hf(run["checkpoint"], str(tmp_path / "hf"))
    text = f"--input={run['tmp'] / 'val.txt'}"
    ours = evaluate(tmp_path, f"--out_dir={run['tmp'] / 'out'}", text)
    exported = evaluate(tmp_path, f"--hf_dir={tmp_path / 'hf'}", text)
    assert exported["model"]["kind"] == "llama" and exported["lm"]["tokens"] == ours["lm"]["tokens"]
    assert exported["lm"]["bpb"] == pytest.approx(ours["lm"]["bpb"], abs=1e-4)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2 (not a Llama) saved by transformers, with GPT-2's tokenizer files."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(path))
    for name in ("vocab.json", "merges.txt"):
        (path / name).write_bytes(open(tokenizer.gpt2_files()[name == "vocab.json"], "rb").read())
    return path


def test_another_transformers_model_is_scored_as_transformers_scores_it(gpt2_dir, tmp_path):
    import transformers

    stories = ["Once upon a time, a cat sat on a mat.", "Lily and Max played ball. They were happy!", "Hi 🙂"]
    figures = evaluate(tmp_path, f"--hf_dir={gpt2_dir}", f"--input={write_txt(tmp_path / 's.txt', stories)}")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir)).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(gpt2_dir))
    nll, tokens = 0.0, 0
    for story in stories:
        ids = torch.tensor([[50256, *hf_tokenizer.encode(story), 50256]])
        with torch.no_grad():
            nll += F.cross_entropy(model(ids).logits[0, :-1].double(), ids[0, 1:], reduction="sum").item()
        tokens += ids.shape[1] - 1
    assert figures["model"]["kind"] == "transformers" and figures["lm"]["tokens"] == tokens
    assert figures["lm"]["loss"] == pytest.approx(nll / tokens, rel=1e-6)


def test_another_transformers_model_samples_through_transformers(gpt2_dir, tmp_path):
    stories = write_txt(tmp_path / "s.txt", ["Once upon a time."])
    result = evaluate(
        tmp_path, f"--hf_dir={gpt2_dir}", f"--input={stories}", "--samples=2", "--max_new_tokens=5"
    )
    texts = result["samples"]["texts"]
    assert len(texts) == 2 and texts[1].startswith(OPENINGS[5]) and len(texts[1]) > len(OPENINGS[5])


def test_story_figures_on_hand_written_texts():
    texts = ["The cat sat on the mat. The cat sat on the mat.", "A dog ran.", "Tom and Sue don't play."]
    figures = story_figures(texts, ended=[True, False, True])
    # words: 12 + 3 + 5; 13 distinct; bigrams 11 + 2 + 4 (6 + 2 + 4 distinct); trigrams 10 + 1 + 3 (6 + 1 + 3)
    assert figures["stories"] == 3 and figures["reach_end"] == pytest.approx(2 / 3)
    assert figures["mean_words"] == pytest.approx(20 / 3)
    assert figures["distinct_1"] == pytest.approx(13 / 20)
    assert figures["distinct_2"] == pytest.approx(12 / 17)
    assert figures["distinct_3"] == pytest.approx(10 / 14)
    assert figures["repeated_4grams"] == pytest.approx(3 / 11)  # the first story's second half, pooled
    assert figures["article_presence"] == pytest.approx(2 / 3)  # "Tom and Sue" has none
    assert figures["articles_per_100_words"] == pytest.approx(100 * 5 / 20)
    assert story_figures(texts)["reach_end"] is None  # real stories


def test_longest_copy_is_the_longest_run_of_words_in_any_training_story():
    texts = ["The cat sat on the mat. The cat sat on the mat.", "Tom and Sue don't play."]
    assert longest_copy(texts, ["Once the cat sat on a hat.", "Sue don't play ball."]) == (
        4,
        "the cat sat on",
    )
    # a longer run that only a later training story holds, after shorter ones
    assert longest_copy(texts, ["the cat", "x, sat on the mat; the cat sat y"]) == (
        7,
        "sat on the mat the cat sat",
    )
    assert longest_copy(texts, ["Nothing here."]) == (0, "")


def test_samples_reference_and_memorisation_through_the_command_line(run, tmp_path):
    out, data = run["tmp"] / "out", run["tmp"] / "data"
    reference = write_txt(tmp_path / "ref.txt", run["val"])
    result = run_script(
        "eval.py",
        f"--out_dir={out}",
        "--samples=3",
        "--max_new_tokens=6",
        "--seed=5",
        f"--reference={reference}",
        f"--output={tmp_path / 'results' / 'eval.json'}",
    )
    assert result.returncode == 0, result.stderr
    figures = json.load(open(tmp_path / "results" / "eval.json"))
    texts = figures["samples"]["texts"]
    assert [t[: len(OPENINGS[i])] for t, i in zip(texts, (0, 3, 7))] == [OPENINGS[i] for i in (0, 3, 7)]
    enc = run["enc"]  # sample 0, a fresh story: what generate.stream gives with seed 5
    tokens = [
        t.item()
        for t in stream(run["model"], torch.tensor([[enc.eot_token]]), 6, eos_id=enc.eot_token, seed=5)
    ]
    assert texts[0] == enc.decode(
        tokens[: tokens.index(enc.eot_token)] if enc.eot_token in tokens else tokens
    )
    assert figures["reference"]["stories"] == 3  # as many real stories as samples
    assert figures["reference"]["mean_words"] == story_figures(run["val"][:3])["mean_words"]
    # memorisation against the data's train split: here every story of train.txt
    assert figures["reference"]["longest_copy"] == longest_copy(run["val"][:3], make_stories(60))[0] > 0
    assert figures["samples"]["longest_copy"] is not None
    assert figures["settings"]["seed"] == 5 and figures["date"]
    assert figures["model"] == {
        "source": str(out / "ckpt.pt"),
        "kind": "llama",
        "context": CONTEXT,
        "iter_num": 0,
        "parameters": run["model"].num_params(),
    }
    assert figures["text"]["source"] == f"{data} val"
    for row in ("loss", "bpb", "distinct-2", "repeated 4-grams", "article presence", "longest copied run"):
        assert row in result.stdout
    assert not (tmp_path / "results" / "eval.json.tmp").exists()


@pytest.fixture(scope="module")
def bad(run, tmp_path_factory):
    """Directories and files for the bad-input cases."""
    tmp = tmp_path_factory.mktemp("bad")
    gpt2_data = tmp / "gpt2_data"  # prepared with another tokenizer
    gpt2_data.mkdir()
    (gpt2_data / "meta.json").write_text(
        json.dumps({"tokenizer": {"kind": "gpt2"}, "vocab_size": 50257, "eot_id": 50256, "dtype": "uint16"})
    )
    (gpt2_data / "val.bin").write_bytes(b"")
    (tmp / "empty").mkdir()
    (tmp / "empty.txt").write_text("\n<|endoftext|>\n")
    (tmp / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    export_hf(run["checkpoint"], str(tmp / "llama"))
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(bert).save_pretrained(str(tmp / "bert"))
    (tmp / "moved").mkdir()  # a run whose data_dir is not on this machine
    save_checkpoint(
        {**run["checkpoint"], "config": {"data_dir": str(tmp / "gone")}}, str(tmp / "moved" / "ckpt.pt")
    )
    (tmp / "no_architectures").mkdir()
    (tmp / "no_architectures" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return tmp


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data_dir={bad}/gpt2_data"], "tokenizer mismatch"),
        (["--data_dir={bad}/empty"], "no meta.json"),
        (["--input={bad}/missing.txt"], "not found"),
        (["--ckpt=nope.pt"], "no checkpoint"),
        (["--input={bad}/empty.txt"], "no stories"),
        (["--input={bad}/latin1.txt"], "not UTF-8"),
        (["--samples=-1"], "--samples=-1"),
        (["--max_stories=-2"], "--max_stories=-2"),
        (["--split=test"], "--split=test"),
        (["--input={bad}/empty.txt", "--data_dir={bad}/empty"], "not both"),
        (["--temperature=-1"], "temperature=-1"),
        (["--output={bad}"], "is a directory"),
        (["--output={bad}/moved/ckpt.pt"], "exists and is not an earlier output of this kind: it is kept"),
        (["--output=/dev/null"], "--output=/dev/null exists and is not an earlier output"),
        (["--reference={bad}/empty.txt", "--samples=2"], "holds no stories"),
        (["--reference={bad}/missing.txt"], "not found"),
        (["--hf_dir={bad}/llama"], "nothing to score"),
        (["--out_dir={bad}/moved"], "which is not here"),
        (["--hf_dir={bad}/bert", "--input={bad}/empty.txt"], "not a causal language model"),
        (["--hf_dir={bad}/no_architectures", "--input={bad}/empty.txt"], "names no architectures"),
        (["--quantize=int4"], "--quantize=int4"),
        (["--hf_dir={bad}/no_architectures", "--quantize=int8"], "--quantize is for our Llama models"),
    ],
)
def test_bad_input_fails_with_one_line(run, bad, args, message):
    result = run_in_process(
        "eval.py", f"--out_dir={run['tmp'] / 'out'}", "--samples=0", *(a.format(bad=bad) for a in args)
    )
    assert_clean_error(result, message)


def test_a_non_llama_model_without_transformers_fails_with_one_line(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    stories = write_txt(tmp_path / "s.txt", ["Once upon a time."])
    assert_clean_error(
        run_in_process("eval.py", f"--hf_dir={gpt2_dir}", f"--input={stories}", "--samples=0"),
        "pip install transformers",
    )


def test_a_temperature_too_small_to_sample_at_samples_greedily(run, tmp_path):
    args = (f"--out_dir={run['tmp'] / 'out'}", "--samples=3", "--max_new_tokens=8")
    tiny_t = run_in_process("eval.py", *args, "--temperature=1e-300", f"--output={tmp_path / 'a.json'}")
    greedy = run_in_process("eval.py", *args, "--temperature=0", f"--output={tmp_path / 'b.json'}")
    assert tiny_t.returncode == greedy.returncode == 0, tiny_t.stderr + greedy.stderr
    texts = [json.load(open(tmp_path / name))["samples"]["texts"] for name in ("a.json", "b.json")]
    assert texts[0] == texts[1] and all(len(t) > len(o) for t, o in zip(texts[0], (OPENINGS[0], OPENINGS[3])))


@pytest.fixture(scope="module")
def broken_tokenizers(tmp_path_factory):
    """Two Hugging Face GPT-2 directories whose tokenizers do not fit: one with more ids than the model has
    rows, one that has a single token and so encodes no story at all."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tmp = tmp_path_factory.mktemp("tokenizers")
    config = dict(n_embd=16, n_layer=1, n_head=2, n_positions=64)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, **config)).save_pretrained(
        tmp / "small"
    )
    for name in ("vocab.json", "merges.txt"):  # GPT-2's 50257 ids for a model of 100
        (tmp / "small" / name).write_bytes(open(tokenizer.gpt2_files()[name == "vocab.json"], "rb").read())
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=1, **config)).save_pretrained(tmp / "one")
    one = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"<|endoftext|>": 0}, merges=[]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=one, eos_token="<|endoftext|>")
    fast.save_pretrained(tmp / "one")
    return tmp


@pytest.mark.parametrize(
    "name, message",
    [
        ("small", "its tokenizer has 50257 ids, more than the model's 100"),
        ("one", "it cannot encode this text"),
    ],
)
def test_a_tokenizer_that_cannot_encode_the_text_is_refused(broken_tokenizers, tmp_path, name, message):
    stories = write_txt(tmp_path / "s.txt", make_stories(3))
    result = run_in_process(
        "eval.py", f"--hf_dir={broken_tokenizers / name}", f"--input={stories}", "--samples=0"
    )
    assert_clean_error(result, message)
