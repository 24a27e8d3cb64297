"""Hugging Face round trip: export a checkpoint as a transformers LlamaForCausalLM directory, and load one.

  python export.py --out_dir=out/smoke --hf_dir=hf/smoke

writes config.json, model.safetensors, generation_config.json and the tokenizer (GPT-2's vocab.json and
merges.txt, or a byte-level BPE tokenizer.json that encodes exactly as our tiktoken vocabulary does).
transformers loads the directory with no code of ours, and exporting does not need transformers.
load_hf() reads such a directory back (train.py --init_from=hf:PATH, sample.py --hf_dir=PATH).
"""
import json
import os
import shutil
import sys

import torch

import tokenizer
from configurator import configure
from model import Llama, ModelConfig

# -----------------------------------------------------------------------------
out_dir = "out"  # reads out_dir/ckpt.pt
hf_dir = "hf"  # writes the Hugging Face directory here
# -----------------------------------------------------------------------------
GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 256}


class HFError(ValueError):
    pass


def bytes_to_unicode():
    """GPT-2's byte -> printable character table that byte-level BPE files are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def to_hf_string(token_bytes, table=bytes_to_unicode()):
    return "".join(table[b] for b in token_bytes)


def bpe_merges(ranks):
    """The merge list for ranks: each token's last merge when BPE runs with the lower ranks only."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], float("inf")))
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        merges.append(f"{to_hf_string(parts[0])} {to_hf_string(parts[1])}")
    return merges


def bpe_tokenizer_json(ranks):
    """A tokenizers tokenizer.json: GPT-2's byte-level pre-tokenization, our ranks as ids, <|endoftext|> last."""
    eot = len(ranks)
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": eot, "content": tokenizer.EOT, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}],
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {to_hf_string(t): r for t, r in ranks.items()} | {tokenizer.EOT: eot},
                      "merges": bpe_merges(ranks)}}


def export(checkpoint, path):
    from safetensors.torch import save_file
    cfg = ModelConfig(**checkpoint["model_args"])
    enc = tokenizer.load_tokenizer(checkpoint["tokenizer"])
    os.makedirs(path, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.dim,
              "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
              "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
              "head_dim": cfg.dim // cfg.n_heads, "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len,
              "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
              "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
              "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "attention_bias": False,
              "mlp_bias": False, "bos_token_id": enc.eot_token, "eos_token_id": enc.eot_token,
              "torch_dtype": "float32"}
    # our names are HF's without the "model." prefix; a tied head is stored once, as HF does
    weights = {(k if k == "lm_head.weight" else "model." + k): v.detach().float().contiguous()
               for k, v in checkpoint["model"].items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": enc.eot_token, "eos_token_id": enc.eot_token, **GENERATION}, f, indent=2)
    special = {"bos_token": tokenizer.EOT, "eos_token": tokenizer.EOT, "unk_token": tokenizer.EOT,
               "model_max_length": cfg.max_seq_len, "add_prefix_space": False}
    if checkpoint["tokenizer"]["kind"] == "gpt2":
        vocab_bpe, encoder_json = tokenizer.gpt2_files()
        shutil.copyfile(encoder_json, os.path.join(path, "vocab.json"))
        shutil.copyfile(vocab_bpe, os.path.join(path, "merges.txt"))
        tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", **special}
    else:
        with open(os.path.join(path, "tokenizer.json"), "w") as f:
            json.dump(bpe_tokenizer_json(tokenizer.text_to_ranks(checkpoint["tokenizer"]["ranks"])), f)
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)


def read_hf_tokenizer(path):
    """Our tokenizer spec for a directory's GPT-2 files or byte-level BPE tokenizer.json."""
    gpt2_vocab = json.load(open(tokenizer.gpt2_files()[1], encoding="utf-8"))
    if os.path.isfile(os.path.join(path, "vocab.json")):
        if json.load(open(os.path.join(path, "vocab.json"), encoding="utf-8")) == gpt2_vocab:
            return {"kind": "gpt2"}
        raise HFError(f"{path}/vocab.json is not GPT-2's vocabulary; only GPT-2's or a byte-level BPE tokenizer.json "
                      "can be imported")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise HFError(f"{path} has no tokenizer (vocab.json + merges.txt, or tokenizer.json)")
    spec = json.load(open(os.path.join(path, "tokenizer.json"), encoding="utf-8"))
    model, pre = spec.get("model", {}), spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise HFError(f"{path}/tokenizer.json is not a byte-level BPE (GPT-2 style); it cannot be imported")
    vocab = dict(model["vocab"])
    vocab.pop(tokenizer.EOT, None)
    if vocab == gpt2_vocab:
        return {"kind": "gpt2"}
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in vocab.items()}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise HFError(f"{path}/tokenizer.json ids are not contiguous ranks; it cannot be imported")
    return {"kind": "bpe", "ranks": tokenizer.ranks_to_text(ranks)}


def read_hf_weights(path):
    from safetensors.torch import load_file
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return load_file(os.path.join(path, "model.safetensors"))
    if os.path.isfile(index):
        weights = {}
        for shard in sorted(set(json.load(open(index))["weight_map"].values())):
            weights |= load_file(os.path.join(path, shard))
        return weights
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        return torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    raise HFError(f"{path} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf(path):
    """(model, tokenizer spec) from a local HF Llama directory; what we cannot represent is refused."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise HFError(f"{path} has no config.json: not a Hugging Face model directory")
    c = json.load(open(config_path))
    if c.get("model_type") != "llama":
        raise HFError(f"{path} holds a {c.get('model_type')!r} model; only Llama (LlamaForCausalLM) can be imported")
    rope = c.get("rope_parameters") or {}  # transformers 5 keeps rope_theta and the scaling type here
    scaling = c.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling:
        raise HFError(f"{path} uses rope_scaling {scaling}, which this model does not implement")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise HFError(f"{path} has attention or MLP biases, which this model does not have")
    if c.get("hidden_act", "silu") != "silu":
        raise HFError(f"{path} uses hidden_act={c['hidden_act']!r}; only silu (SwiGLU) is implemented")
    if c.get("head_dim") not in (None, c["hidden_size"] // c["num_attention_heads"]):
        raise HFError(f"{path} has head_dim={c['head_dim']}, not hidden_size / num_attention_heads")
    cfg = ModelConfig(dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
                      n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"], vocab_size=c["vocab_size"],
                      hidden_dim=c["intermediate_size"], norm_eps=c.get("rms_norm_eps", 1e-6),
                      rope_theta=c.get("rope_theta") or rope.get("rope_theta", 10000.0), max_seq_len=c.get("max_position_embeddings", 2048),
                      tie_embeddings=c.get("tie_word_embeddings", False))
    weights = {k.removeprefix("model."): v.float() for k, v in read_hf_weights(path).items()
               if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        weights.setdefault("lm_head.weight", weights.get("embed_tokens.weight"))
    model = Llama(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise HFError(f"{path}: the weights do not match config.json ({detail})")
    return model, read_hf_tokenizer(path)


def main():
    from checkpoint import CheckpointError, load_checkpoint
    try:
        export(load_checkpoint(os.path.join(out_dir, "ckpt.pt")), hf_dir)
    except (CheckpointError, tokenizer.TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"exported {out_dir}/ckpt.pt to {hf_dir}: load it with transformers' "
          f"AutoModelForCausalLM.from_pretrained({hf_dir!r}) and AutoTokenizer.from_pretrained({hf_dir!r})")


if __name__ == "__main__":
    configure(globals())
    main()
