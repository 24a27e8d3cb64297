"""GGUF export (llamacpp.py, export.py --gguf) checked with the real llama.cpp, through llama-cpp-python."""

import errno
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, make_stories, run_in_process, run_script, write_txt

import tokenizer
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from llamacpp import open_in_llama_cpp
from model import Llama, ModelConfig

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "<|endoftext|>Max said: \"Look!\" It's 12345 and 3.14, don't you think?<|endoftext|>",
    "café naïve 🙂 日本語",
    "  two  spaces,   three\n\nnewlines\n\n\n and a tab\there   ",
    "\n",
]
PROMPT = "Once upon a time there was a little girl named Lily. She liked to play in the park with her dog."
TINY = [
    "--dim=32",
    "--n_layers=2",
    "--n_heads=4",
    "--block_size=32",
    "--max_seq_len=256",
    "--batch_size=4",
    "--gradient_accumulation_steps=2",
    "--max_iters=20",
    "--eval_interval=100",  # evaluates at 0 and at the end
    "--eval_iters=2",
    "--log_interval=10",
    "--compile=False",
    "--learning_rate=3e-3",
    "--warmup_iters=5",
]
# f16 rounds weights and activations to 11 significant bits (2**-11: 5e-4 relative); q8_0 rounds each
# weight to 1/254 of its 32-block's largest magnitude, and llama.cpp rounds the activations to q8_0 as well.
# The bounds are on the largest logit error at a position over the standard deviation of its logits (the
# spread that decides sampling): measured 0.0007 (f16) and 0.013 (q8_0) on the trained model, 0.003 (q8_0)
# on the random one, so they leave 7x or more. RoPE's layout is checked in f32, where the bound is tight.
SPREAD_BOUNDS = {"f16": 0.01, "q8_0": 0.1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for torch here and in train.py: these tiny models gain nothing from a second, and on a
    shared 2-core machine every op waits for it (sample.py's 30 tokens: up to 1.5 s on two, 0.1 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def open_llama(path):
    """llama.cpp with every position's logits and an f32 KV cache (its default f16 cache would add its own
    rounding). One thread: with two, llama.cpp's threads spin at every op's barrier, and 30 tokens of a tiny
    model took 8 s here against 0.4 s on one."""
    return open_in_llama_cpp(
        path, 256, 1, logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32
    )


def export(out_dir, path, *args):
    result = run_in_process("export.py", f"--out_dir={out_dir}", f"--gguf={path}", *args)
    assert result.returncode == 0, result.stderr
    return result


def export_error(out_dir, *args):
    return run_in_process("export.py", f"--out_dir={out_dir}", *args)


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def our_logits(model, ids):
    with torch.no_grad():
        return model.lm_head(model.hidden(torch.tensor([ids])))[0].numpy()


def spread_error(theirs, ours):
    """The largest logit error at each position over the standard deviation of that position's logits."""
    return np.abs(theirs - ours).max(axis=-1) / ours.std(axis=-1)


# ----------------------------------------------------------------------------- trained models


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    """A small dataset in GPT-2's tokens."""
    tmp = tmp_path_factory.mktemp("gpt2")
    stories = write_txt(tmp / "stories.txt", make_stories(100, seed=1))
    result = run_in_process("prepare.py", f"--input={stories}", f"--out_dir={tmp / 'data'}", "--num_proc=1")
    assert result.returncode == 0, result.stderr
    return tmp / "data"


@pytest.fixture(scope="module")
def runs(data_dir, gpt2_data, tmp_path_factory):
    """Two models trained by train.py and exported by export.py: on our 300-id BPE with tied embeddings and
    grouped-query attention (2 key/value heads for 4), on GPT-2's tokenizer untied with 4 of each. Each run:
    its out_dir, its model and tokenizer as the checkpoint loads them, its llama.cpp models by type."""
    tmp = tmp_path_factory.mktemp("runs")
    shapes = {
        "bpe": (data_dir, ["--tie_embeddings=True", "--n_kv_heads=2"], ("f32", "f16", "q8_0")),
        # GPT-2's 50257-row head and embedding make each step 10x dearer: fewer, smaller steps
        "gpt2": (
            gpt2_data,
            ["--tie_embeddings=False", "--n_kv_heads=4", "--batch_size=2", "--max_iters=10"],
            ("f32",),
        ),
    }
    runs = {}
    for kind, (data, shape, types) in shapes.items():
        out = tmp / kind
        train = run_script("train.py", f"--data_dir={data}", f"--out_dir={out}", *TINY, *shape)
        assert train.returncode == 0, train.stdout + train.stderr
        checkpoint = load_checkpoint(str(out / "ckpt.pt"))
        for gguf_type in types:
            export(out, tmp / f"{kind}.{gguf_type}.gguf", f"--gguf_type={gguf_type}")
        runs[kind] = {
            "out_dir": out,
            "checkpoint": checkpoint,
            "model": model_from_checkpoint(checkpoint).eval(),
            "enc": tokenizer.load_tokenizer(checkpoint["tokenizer"]),
            "llama": {gguf_type: open_llama(tmp / f"{kind}.{gguf_type}.gguf") for gguf_type in types},
        }
    yield runs
    for run in runs.values():
        for llm in run["llama"].values():
            llm.close()


@pytest.mark.slow
def test_the_trained_models_have_the_shapes_they_stand_for(runs):
    bpe, gpt2 = runs["bpe"]["model"].config, runs["gpt2"]["model"].config
    assert bpe.tie_embeddings and bpe.n_kv_heads < bpe.n_heads and bpe.vocab_size == 300
    assert not gpt2.tie_embeddings and gpt2.n_kv_heads == gpt2.n_heads and gpt2.vocab_size == 50257


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_llama_cpp_tokenizes_as_we_do(runs, kind):
    enc, llm = runs[kind]["enc"], runs[kind]["llama"]["f32"]
    for text in TEXTS + make_stories(20, seed=3):
        ours = enc.encode(text, allowed_special={tokenizer.EOT})
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        assert llm.detokenize(ours, special=True).decode() == text


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_llama_cpp_greedy_text_equals_sample_py(runs, kind):
    """llama.cpp tokenizes the prompt as llama-completion does (the file's add_bos_token puts <|endoftext|>
    first, as sample.py does) and decodes greedily until <|endoftext|>, as sample.py does."""
    run, max_new_tokens = runs[kind], 30
    llm = run["llama"]["f32"]
    for prompt in ["Once upon a time", "Lily and Max", ""]:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        assert ids[0] == run["enc"].eot_token
        llm.reset()
        new = []
        for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
            if token == llm.token_eos() or len(new) == max_new_tokens:
                break
            new.append(token)
        ours = run_in_process(
            "sample.py",
            f"--out_dir={run['out_dir']}",
            f"--start={prompt}",
            "--temperature=0",
            "--repetition_penalty=1.0",
            f"--max_new_tokens={max_new_tokens}",
        )
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == prompt + llm.detokenize(new).decode(errors="replace") + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_llama_cpp_logits_equal_ours_in_f32(runs, kind):
    run = runs[kind]
    ids = [run["enc"].eot_token] + run["enc"].encode(PROMPT)
    np.testing.assert_allclose(
        llama_logits(run["llama"]["f32"], ids), our_logits(run["model"], ids), rtol=0, atol=1e-3
    )


@pytest.mark.slow
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_llama_cpp_logits_stay_close_in_f16_and_q8_0(runs, gguf_type):
    run = runs["bpe"]
    ids = [run["enc"].eot_token] + run["enc"].encode(PROMPT)
    error = spread_error(llama_logits(run["llama"][gguf_type], ids), our_logits(run["model"], ids))
    assert 1e-5 < error.max() < SPREAD_BOUNDS[gguf_type], error  # above f32's: the type was applied


@pytest.mark.slow
def test_the_code_that_trained_a_model_is_in_its_metadata(runs):
    meta = runs["bpe"]["llama"]["f32"].metadata
    recorded = {key: value for key, value in meta.items() if key.startswith("tinyllama.code.")}
    code = runs["bpe"]["checkpoint"]["code"]  # every checkpoint train.py writes has it
    assert recorded == {f"tinyllama.code.{key}": str(value) for key, value in code.items()}
    assert recorded["tinyllama.code.model_py"] == code["model_py"]


# ----------------------------------------------------------------------------- random models: layout, files


def save_random_run(out_dir, spec, block_scale=1.0, **shape):
    """A random tiny model saved as train.py saves it (what the file holds needs no training); its checkpoint.
    block_scale multiplies the blocks' matrices: at 5 attention, and so RoPE's layout, moves the logits."""
    cfg = ModelConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, **shape})
    torch.manual_seed(0)
    weights = {
        name: w * block_scale if name.startswith("layers.") and w.dim() == 2 else w
        for name, w in Llama(cfg).state_dict().items()
    }
    checkpoint = {"model_args": asdict(cfg), "model": weights, "tokenizer": spec}
    out_dir.mkdir()
    save_checkpoint(checkpoint, str(out_dir / "ckpt.pt"))
    return checkpoint


@pytest.fixture(scope="module")
def bpe_spec():
    return tokenizer.bpe_spec(tokenizer.train_bpe(tokenizer.count_pretokens(make_stories(100)), 350))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory, bpe_spec):
    """Tied embeddings and grouped-query attention on a 350-id BPE."""
    tmp = tmp_path_factory.mktemp("random")
    save_random_run(tmp / "out", bpe_spec, vocab_size=350, n_kv_heads=2, tie_embeddings=True)
    return tmp


def test_rope_pairs_and_grouped_heads_are_where_llama_cpp_rotates_them(tmp_path, bpe_spec):
    """At initialisation attention barely moves the logits: q and k left unpermuted moved them by 4e-3, just
    over the bound. With the blocks' matrices 5x larger, that or k permuted as 4 heads moved them by 0.7 to
    0.8 (their standard deviation: 0.16), the right layout by 7e-7. The permutation comes before any rounding,
    so f32 checks it for every type."""
    checkpoint = save_random_run(tmp_path / "out", bpe_spec, 5.0, vocab_size=350, dim=64, n_kv_heads=2)
    export(tmp_path / "out", tmp_path / "model.gguf", "--gguf_type=f32")
    ids = [349] + torch.randint(0, 349, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    llm = open_llama(tmp_path / "model.gguf")
    try:
        theirs, ours = llama_logits(llm, ids), our_logits(model_from_checkpoint(checkpoint).eval(), ids)
    finally:
        llm.close()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-3)


def test_metadata_says_what_llama_cpp_needs(random_run):
    export(random_run / "out", random_run / "model.gguf", "--gguf_type=q8_0")
    llm = open_llama(random_run / "model.gguf")
    try:
        meta = llm.metadata
    finally:
        llm.close()
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "out"
    expected = {
        "context_length": "64",
        "embedding_length": "32",
        "block_count": "2",
        "feed_forward_length": "96",
        "attention.head_count": "4",
        "attention.head_count_kv": "2",
        "rope.freq_base": "10000.000000",
        "attention.layer_norm_rms_epsilon": "0.000010",
        "vocab_size": "350",
    }
    assert {key: meta[f"llama.{key}"] for key in expected} == expected
    assert meta["general.file_type"] == str(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == "349"
    assert meta["tokenizer.ggml.add_bos_token"] == "true"
    assert not [key for key in meta if key.startswith("tinyllama.code.")]  # this checkpoint records none
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(random_run / "model.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied: llama.cpp reads the embedding for the head


def test_q8_0_writes_rows_that_are_not_a_multiple_of_32_in_f16(tmp_path, bpe_spec):
    checkpoint = save_random_run(tmp_path / "out", bpe_spec, vocab_size=350, dim=48, n_layers=1)
    result = export(tmp_path / "out", tmp_path / "model.gguf", "--gguf_type=q8_0")
    assert "matrices in f16" in result.stderr
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "model.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of hidden_dim = 128
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "F16"  # rows of dim = 48
    ids = [349, 72, 105, 300]
    llm = open_llama(tmp_path / "model.gguf")
    try:
        theirs, ours = llama_logits(llm, ids), our_logits(model_from_checkpoint(checkpoint).eval(), ids)
    finally:
        llm.close()
    assert spread_error(theirs, ours).max() < SPREAD_BOUNDS["q8_0"]


def test_exporting_over_a_gguf_replaces_it(random_run, tmp_path):
    path = tmp_path / "model.gguf"
    export(random_run / "out", path, "--gguf_type=f32")
    f32_size = path.stat().st_size
    export(random_run / "out", path, "--gguf_type=f16")
    assert path.stat().st_size < f32_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_a_file_that_is_not_gguf_is_never_overwritten(random_run, tmp_path):
    precious = tmp_path / "notes.gguf"
    precious.write_text("my notes\n")
    assert_clean_error(export_error(random_run / "out", f"--gguf={precious}"), "not a GGUF file")
    assert precious.read_text() == "my notes\n"
    assert_clean_error(export_error(random_run / "out", f"--gguf={tmp_path}"), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf"]


BYTES_ONLY = tokenizer.bpe_spec({bytes([b]): b for b in range(256)})  # 257 ids, no merges


@pytest.mark.parametrize(
    "vocab_size, message", [(350, "350 token rows but its tokenizer 257 ids"), (257, "no merges")]
)
def test_what_llama_cpp_cannot_load_is_refused_and_an_export_kept(random_run, tmp_path, vocab_size, message):
    path = tmp_path / "model.gguf"
    export(random_run / "out", path)
    before = path.read_bytes()
    save_random_run(tmp_path / "bad", BYTES_ONLY, vocab_size=vocab_size)
    assert_clean_error(export_error(tmp_path / "bad", f"--gguf={path}"), message)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "model.gguf"]


def test_a_failed_write_leaves_the_earlier_export_and_no_temporary_file(random_run, tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    export(random_run / "out", path)
    before = path.read_bytes()

    def disk_full(self, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    assert_clean_error(export_error(random_run / "out", f"--gguf={path}"), "No space left on device")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_without_the_gguf_package_one_line_says_how_to_install_it(random_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    assert_clean_error(export_error(random_run / "out", f"--gguf={tmp_path / 'm.gguf'}"), "pip install gguf")
    assert list(tmp_path.iterdir()) == []


def test_export_needs_a_target_and_a_known_type(random_run):
    assert_clean_error(export_error(random_run / "out"), "--hf_dir", "--gguf")
    assert_clean_error(export_error(random_run / "out", "--gguf=same", "--hf_dir=same"), "name the same path")
    assert_clean_error(export_error(random_run / "out", "--gguf=m.gguf", "--gguf_type=q4_0"), "f16")
