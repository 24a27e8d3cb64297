import json
import os

import pytest
import torch
from conftest import all_logits, assert_clean_error, make_stories, run_in_process

import tokenizer
from generate import generate
from hf import HFError, load_hf
from hf import export_hf as export
from model import Llama, ModelConfig

transformers = pytest.importorskip("transformers")


def checkpoint_for(spec, vocab_size, **shape):
    """A checkpoint dict as train.py writes it, for a small random model."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        **{
            "dim": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "vocab_size": vocab_size,
            "max_seq_len": 64,
            **shape,
        }
    )
    model = Llama(cfg)
    from dataclasses import asdict

    return {"model_args": asdict(cfg), "model": model.state_dict(), "tokenizer": spec}, model.eval()


@pytest.fixture(scope="module")
def bpe_spec():
    ranks = tokenizer.train_bpe(tokenizer.count_pretokens(make_stories(200)), 350)
    return {"kind": "bpe", "ranks": tokenizer.ranks_to_text(ranks)}


@pytest.mark.parametrize("tied", [True, False])
def test_exported_model_gives_our_logits_and_greedy_tokens_in_transformers(tmp_path, bpe_spec, tied):
    ckpt, ours = checkpoint_for(bpe_spec, 350, tie_embeddings=tied, rope_theta=500.0)
    export(ckpt, str(tmp_path))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 350, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, all_logits(ours, idx), rtol=0, atol=1e-4)
        hf_greedy = theirs.generate(
            idx[:1],
            max_new_tokens=15,
            do_sample=False,
            repetition_penalty=1.0,
            min_new_tokens=15,
            eos_token_id=None,
            pad_token_id=349,
        )
    assert torch.equal(hf_greedy, generate(ours, idx[:1], 15, temperature=0, repetition_penalty=1.0))
    config = json.load(open(tmp_path / "config.json"))
    assert config["tie_word_embeddings"] is tied and config["num_key_value_heads"] == 2
    generation = json.load(open(tmp_path / "generation_config.json"))
    assert (generation["temperature"], generation["top_p"], generation["repetition_penalty"]) == (
        0.7,
        0.9,
        1.1,
    )


@pytest.mark.parametrize("kind", ["gpt2", "bpe"])
def test_auto_tokenizer_ids_equal_tiktokens(tmp_path, bpe_spec, kind):
    spec = {"kind": "gpt2"} if kind == "gpt2" else bpe_spec
    enc = tokenizer.load_tokenizer(spec)
    export(checkpoint_for(spec, enc.n_vocab, dim=16, n_heads=2, n_kv_heads=2)[0], str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for story in make_stories(100, seed=5) + ["  spaces  and\ttabs\n\nnewlines", "日本語 🙂 café"]:
        assert hf.encode(story, add_special_tokens=False) == enc.encode_ordinary(story)
        assert hf.decode(enc.encode_ordinary(story)) == story
    assert hf.convert_tokens_to_ids(tokenizer.EOT) == enc.eot_token


def test_sample_py_greedy_equals_transformers_greedy_on_an_exported_model(tmp_path, bpe_spec):
    ckpt, _ = checkpoint_for(bpe_spec, 350, dim=64)
    from checkpoint import save_checkpoint

    (tmp_path / "out").mkdir()
    save_checkpoint(ckpt, str(tmp_path / "out" / "ckpt.pt"))
    export(ckpt, str(tmp_path / "hf"))
    enc = tokenizer.load_tokenizer(bpe_spec)
    prompt = [enc.eot_token] + enc.encode_ordinary("Lily and Max")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = theirs.generate(
        torch.tensor([prompt]),
        max_new_tokens=30,
        do_sample=False,
        repetition_penalty=1.0,
        pad_token_id=enc.eot_token,
    )[0, len(prompt) :].tolist()
    if enc.eot_token in ids:
        ids = ids[: ids.index(enc.eot_token)]
    for source in (f"--out_dir={tmp_path / 'out'}", f"--hf_dir={tmp_path / 'hf'}"):
        result = run_in_process(
            "sample.py",
            source,
            "--start=Lily and Max",
            "--temperature=0",
            "--repetition_penalty=1.0",
            "--max_new_tokens=30",
        )
        assert result.stdout == "Lily and Max" + enc.decode(ids) + "\n", result.stderr


@pytest.mark.parametrize("tied", [True, False])
def test_a_transformers_llama_imports_with_the_same_logits(tmp_path, tied):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50257,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=500.0,
        tie_word_embeddings=tied,
    )
    theirs = transformers.LlamaForCausalLM(config).eval()
    theirs.save_pretrained(str(tmp_path))
    for name in ("vocab.json", "merges.txt"):  # the seeds ship GPT-2's tokenizer files
        src = tokenizer.gpt2_files()[name == "vocab.json"]
        (tmp_path / name).write_bytes(open(src, "rb").read())
    ours, spec = load_hf(str(tmp_path))
    assert spec == {"kind": "gpt2"}
    assert (
        ours.config.tie_embeddings is tied and ours.config.n_kv_heads == 2 and ours.config.rope_theta == 500.0
    )
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(all_logits(ours.eval(), idx), theirs(idx).logits, rtol=0, atol=1e-4)


def test_export_import_export_gives_identical_weights(tmp_path, bpe_spec):
    from safetensors.torch import load_file

    ckpt, _ = checkpoint_for(bpe_spec, 350)
    export(ckpt, str(tmp_path / "a"))
    model, spec = load_hf(str(tmp_path / "a"))
    assert spec == bpe_spec
    from dataclasses import asdict

    export(
        {"model_args": asdict(model.config), "model": model.state_dict(), "tokenizer": spec},
        str(tmp_path / "b"),
    )
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(tmp_path / "a" / "config.json")) == json.load(open(tmp_path / "b" / "config.json"))


def edit_config(path, **changes):
    config = json.load(open(path / "config.json"))
    config.update(changes)
    json.dump(config, open(path / "config.json", "w"))


@pytest.mark.parametrize(
    "case, message",
    [
        ("no config", "no config.json"),
        ("not llama", "only Llama"),
        ("shape mismatch", "do not match config.json"),
        ("rope scaling", "rope_scaling"),
        ("biases", "biases"),
        ("no weights", "no model.safetensors"),
        ("invalid config", "not valid JSON"),
        ("config without hidden_size", "lacks hidden_size"),
        ("pickled weights", "cannot be read safely"),
    ],
)
def test_what_we_cannot_represent_is_refused_with_one_line(tmp_path, bpe_spec, case, message):
    export(checkpoint_for(bpe_spec, 350)[0], str(tmp_path))
    if case == "no config":
        os.remove(tmp_path / "config.json")
    elif case == "not llama":
        edit_config(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    elif case == "shape mismatch":
        edit_config(tmp_path, intermediate_size=128)
    elif case == "rope scaling":
        edit_config(tmp_path, rope_scaling={"type": "yarn", "factor": 4.0})
    elif case == "biases":
        edit_config(tmp_path, attention_bias=True)
    elif case == "no weights":
        os.remove(tmp_path / "model.safetensors")
    elif case == "invalid config":
        (tmp_path / "config.json").write_text('{"model_type": "llama",')
    elif case == "config without hidden_size":
        config = json.load(open(tmp_path / "config.json"))
        del config["hidden_size"]
        json.dump(config, open(tmp_path / "config.json", "w"))
    elif case == "pickled weights":  # a pickle that would run code: weights_only refuses it
        os.remove(tmp_path / "model.safetensors")
        torch.save({"model.embed_tokens.weight": os.system}, tmp_path / "pytorch_model.bin")
    with pytest.raises(HFError, match=message):
        load_hf(str(tmp_path))
    assert_clean_error(run_in_process("sample.py", f"--hf_dir={tmp_path}"), message)


def test_export_needs_a_checkpoint(tmp_path):
    assert_clean_error(
        run_in_process("export.py", f"--out_dir={tmp_path}", f"--hf_dir={tmp_path / 'hf'}"), "no checkpoint"
    )


def test_exporting_over_an_export_replaces_it_whole(tmp_path, bpe_spec):
    gpt2 = tokenizer.load_tokenizer({"kind": "gpt2"})
    export(checkpoint_for({"kind": "gpt2"}, gpt2.n_vocab, dim=16, n_heads=2)[0], str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "vocab.json").exists()
    export(checkpoint_for(bpe_spec, 350)[0], str(tmp_path / "hf"))  # now a custom vocabulary
    assert sorted(os.listdir(tmp_path / "hf")) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert load_hf(str(tmp_path / "hf"))[1] == bpe_spec
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf.encode("Lily and Max", add_special_tokens=False) == tokenizer.load_tokenizer(
        bpe_spec
    ).encode_ordinary("Lily and Max")
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary directory left behind
    assert all(
        os.stat(tmp_path / "hf" / name).st_mode & 0o777 == 0o644 for name in os.listdir(tmp_path / "hf")
    )


def test_a_directory_that_is_not_an_export_is_never_replaced(tmp_path, bpe_spec):
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(HFError, match="not part of an export"):
        export(checkpoint_for(bpe_spec, 350)[0], str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]
