"""The Hugging Face round trip: our checkpoints as transformers LlamaForCausalLM directories, and back.

export_hf() writes config.json, model.safetensors, generation_config.json and the tokenizer (GPT-2's
vocab.json and merges.txt, or a byte-level BPE tokenizer.json that encodes exactly as our tiktoken vocabulary
does); transformers loads it with no code of ours, and writing it needs only safetensors. load_hf() reads such
a directory (or any local HF Llama) into our model, refusing what it cannot represent with one line.
"""

import json
import os
import shutil

import torch

import tokenizer
from configurator import SAMPLING, UserError
from model import Llama, ModelConfig

EXPORT_FILES = {
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
}


class HFError(UserError):
    pass


# ----------------------------------------------------------------------------- weights


def to_hf_weights(state_dict, cfg):
    """Our state dict in HF Llama's names: q/k/v and gate/up split, "model." prefixed, a tied head once."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    weights = {}
    for name, w in state_dict.items():
        w = w.detach().float()
        if name.endswith("qkv_proj.weight"):
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), w.split([q, kv, kv])):
                weights["model." + name.replace("qkv_proj", part)] = piece
        elif name.endswith("gate_up_proj.weight"):
            for part, piece in zip(("gate_proj", "up_proj"), w.chunk(2)):
                weights["model." + name.replace("gate_up_proj", part)] = piece
        elif name == "lm_head.weight":
            if not cfg.tie_embeddings:
                weights[name] = w
        else:
            weights["model." + name] = w
    return {k: v.contiguous() for k, v in weights.items()}


def from_hf_weights(weights):
    """HF Llama's names (with or without "model.") in ours: q/k/v and gate/up fused."""
    ours = {k.removeprefix("model."): v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    for name in [k for k in ours if k.endswith("q_proj.weight")]:
        parts = [ours.pop(name.replace("q_proj", p)) for p in ("q_proj", "k_proj", "v_proj")]
        ours[name.replace("q_proj", "qkv_proj")] = torch.cat(parts)
    for name in [k for k in ours if k.endswith("gate_proj.weight")]:
        parts = [ours.pop(name.replace("gate_proj", p)) for p in ("gate_proj", "up_proj")]
        ours[name.replace("gate_proj", "gate_up_proj")] = torch.cat(parts)
    return ours


# ----------------------------------------------------------------------------- tokenizer files


def bytes_to_unicode():
    """GPT-2's byte -> printable character table that byte-level BPE files are written in."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_TO_UNICODE = bytes_to_unicode()


def to_hf_string(token_bytes):
    return "".join(BYTE_TO_UNICODE[b] for b in token_bytes)


def bpe_merges(ranks):
    """The merge list for ranks: each token's last merge when BPE runs with the lower ranks only."""
    merges = []
    for token in sorted(ranks, key=ranks.get):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], float("inf")))
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        merges.append(f"{to_hf_string(parts[0])} {to_hf_string(parts[1])}")
    return merges


def bpe_tokenizer_json(ranks):
    """A tokenizer.json: GPT-2's byte-level pre-tokenization, our ranks as ids, end-of-text last."""
    eot = len(ranks)
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": eot,
                "content": tokenizer.EOT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {to_hf_string(t): r for t, r in ranks.items()} | {tokenizer.EOT: eot},
            "merges": bpe_merges(ranks),
        },
    }


def read_hf_tokenizer(path):
    """Our tokenizer spec for a directory's GPT-2 files or byte-level BPE tokenizer.json."""
    gpt2_vocab = json.load(open(tokenizer.gpt2_files()[1], encoding="utf-8"))
    if os.path.isfile(os.path.join(path, "vocab.json")):
        if read_json(os.path.join(path, "vocab.json")) == gpt2_vocab:
            return tokenizer.gpt2_spec()
        raise HFError(
            f"{path}/vocab.json is not GPT-2's vocabulary; only GPT-2's or a byte-level BPE tokenizer.json "
            "can be imported"
        )
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise HFError(f"{path} has no tokenizer (vocab.json + merges.txt, or tokenizer.json)")
    spec = read_json(os.path.join(path, "tokenizer.json"))
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise HFError(f"{path}/tokenizer.json is not a byte-level BPE (GPT-2 style); it cannot be imported")
    vocab = dict(model["vocab"])
    vocab.pop(tokenizer.EOT, None)
    if vocab == gpt2_vocab:
        return tokenizer.gpt2_spec()
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in vocab.items()}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise HFError(f"{path}/tokenizer.json ids are not contiguous ranks; it cannot be imported")
    return tokenizer.bpe_spec(ranks)


# ----------------------------------------------------------------------------- export


def write_export(checkpoint, path):
    """Writes the HF directory for a checkpoint dict (model_args, model, tokenizer) into path, a new
    directory."""
    from safetensors.torch import save_file

    cfg = ModelConfig(**checkpoint["model_args"])
    spec = checkpoint["tokenizer"]
    enc = tokenizer.load_tokenizer(spec)
    os.makedirs(path)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": enc.eot_token,
        "eos_token_id": enc.eot_token,
        "torch_dtype": "float32",
        **(
            {"tinyllama_code": checkpoint["code"]} if "code" in checkpoint else {}
        ),  # the code that trained it
    }
    save_file(
        to_hf_weights(checkpoint["model"], cfg),
        os.path.join(path, "model.safetensors"),
        metadata={"format": "pt"},
    )
    generation = {"bos_token_id": enc.eot_token, "eos_token_id": enc.eot_token, "do_sample": True, **SAMPLING}
    special = {
        "bos_token": tokenizer.EOT,
        "eos_token": tokenizer.EOT,
        "unk_token": tokenizer.EOT,
        "model_max_length": cfg.max_seq_len,
        "add_prefix_space": False,
    }
    files = {"config.json": config, "generation_config.json": generation}
    if tokenizer.spec_kind(spec) == "gpt2":
        vocab_bpe, encoder_json = tokenizer.gpt2_files()
        shutil.copyfile(encoder_json, os.path.join(path, "vocab.json"))
        shutil.copyfile(vocab_bpe, os.path.join(path, "merges.txt"))
        files["tokenizer_config.json"] = {"tokenizer_class": "GPT2Tokenizer", **special}
    else:
        files["tokenizer.json"] = bpe_tokenizer_json(tokenizer.spec_ranks(spec))
        files["tokenizer_config.json"] = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    for name, content in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
    for name in os.listdir(path):  # readable by all, as any other file a user writes (safetensors makes 0600)
        os.chmod(os.path.join(path, name), 0o644)


def export_hf(checkpoint, path):
    """Exports into path through a temporary sibling directory swapped in at the end, so a failed export
    leaves an earlier one whole and a new one leaves no stale files. A non-empty directory that is not an
    export (it holds other files) is refused rather than replaced."""
    path = os.path.normpath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise HFError(f"--hf_dir={path} is a file: give a directory to export into")
        foreign = sorted(set(os.listdir(path)) - EXPORT_FILES)
        if foreign:
            raise HFError(
                f"--hf_dir={path} holds files that are not part of an export ({', '.join(foreign[:3])}); "
                "give a new or empty directory, or an earlier export to replace"
            )
    tmp, old = path + ".export-tmp", path + ".export-old"
    for leftover in (tmp, old):  # from an export that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        write_export(checkpoint, tmp)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- import


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{path} is not valid JSON ({e})")


def read_hf_weights(path):
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    try:
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            return load_file(os.path.join(path, "model.safetensors"))
        if os.path.isfile(index):
            weights = {}
            for shard in sorted(set(read_json(index)["weight_map"].values())):
                weights |= load_file(os.path.join(path, shard))
            return weights
        if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            return torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    except HFError:
        raise
    except Exception as e:  # a truncated file, or a pickle that weights_only refuses: never run its code
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise HFError(f"{path}: the weights cannot be read safely ({type(e).__name__}: {reason})")
    raise HFError(f"{path} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def read_hf_config(path, flag="--hf_dir="):
    """config.json, checked to be a Llama this model can represent."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise HFError(f"{flag}{path} is not a directory")
    if not os.path.isfile(config_path):
        raise HFError(f"{path} has no config.json: not a Hugging Face model directory")
    c = read_json(config_path)
    if not isinstance(c, dict):
        raise HFError(f"{config_path} is not a model config (a JSON object)")
    if c.get("model_type") != "llama":
        raise HFError(
            f"{path} holds a {c.get('model_type')!r} model; only Llama (LlamaForCausalLM) can be imported"
        )
    missing = [
        k
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        if not isinstance(c.get(k), int)
    ]
    if missing:
        raise HFError(f"{config_path} lacks {', '.join(missing)} (or has a non-integer value)")
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
    try:
        return ModelConfig(
            dim=c["hidden_size"],
            n_layers=c["num_hidden_layers"],
            n_heads=c["num_attention_heads"],
            n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            vocab_size=c["vocab_size"],
            hidden_dim=c["intermediate_size"],
            norm_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=c.get("rope_theta") or rope.get("rope_theta", 10000.0),
            max_seq_len=c.get("max_position_embeddings", 2048),
            tie_embeddings=c.get("tie_word_embeddings", False),
        )
    except ValueError as e:
        raise HFError(f"{config_path}: {e}")


def load_hf(path, flag="--hf_dir="):
    """(model, tokenizer spec) from a local HF Llama directory; what we cannot represent is refused."""
    cfg = read_hf_config(path, flag)
    weights = from_hf_weights({k: v.float() for k, v in read_hf_weights(path).items()})
    if cfg.tie_embeddings:
        weights.setdefault("lm_head.weight", weights.get("embed_tokens.weight"))
    model = Llama(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise HFError(f"{path}: the weights do not match config.json ({detail})")
    return model, read_hf_tokenizer(path)
