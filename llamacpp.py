"""GGUF export: a checkpoint as one file that llama.cpp, Ollama and LM Studio run as architecture llama.

Written with gguf-py (`pip install gguf`, the writer llama.cpp maintains) straight from the checkpoint dict,
through hf.py's Hugging Face weight names and tokenizer strings and gguf-py's map from those names to
llama.cpp's. Two things differ from the Hugging Face export: the q and k rows are permuted from our
rotate-half RoPE to the interleaved pairs llama.cpp rotates, and <|endoftext|> is bos, eos and padding, with
add_bos_token set, so llama.cpp starts every prompt with it as sample.py does and stops where a story ends.
"""

import os

import tokenizer
from configurator import UserError
from hf import bpe_merges, to_hf_string, to_hf_weights
from model import ModelConfig

# gguf_type: (type of the matrices, file type recorded in the header)
GGUF_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}


class GGUFError(UserError):
    pass


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFError("GGUF export needs the package gguf: pip install gguf")
    return gguf


def rope_interleaved(w, n_heads):
    """q or k rows, head by head, from rotate-half order (dimension i pairs with i + head_dim/2) into the
    interleaved order (2i with 2i + 1) of Meta's Llama that llama.cpp's llama architecture rotates: the
    permutation of llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute); k has n_kv_heads heads."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def add_tokenizer(writer, gguf, enc):
    """GPT-2's byte-level BPE in llama.cpp's terms: tokens in GPT-2's byte-to-unicode form, the merge list,
    <|endoftext|> a control token, GPT-2's pre-tokenizer."""
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.eot_token)}  # <|endoftext|>: the last id
    tokens = [to_hf_string(t) for t in ranks] + [tokenizer.EOT]
    merges = bpe_merges(ranks)
    if not merges:
        raise GGUFError(
            "the tokenizer has no merges (bytes only), and llama.cpp loads no byte-level BPE without them: "
            "prepare the data with a --vocab_size above 257"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_string("tokenizer.ggml.pretokenizer", tokenizer.GPT2_PATTERN)  # Ollama's Go engine reads this
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(ranks) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(enc.eot_token)
    writer.add_eos_token_id(enc.eot_token)
    writer.add_pad_token_id(enc.eot_token)
    writer.add_add_bos_token(True)  # llama.cpp's prompt then begins [<|endoftext|>, ...], as sample.py's does


def add_weights(writer, gguf, state_dict, cfg, gguf_type):
    """Every weight under llama.cpp's name in gguf_type, norms in f32 (as llama.cpp keeps them); a q8_0 matrix
    whose rows are not a multiple of q8_0's 32-value block is written in f16, as convert_hf_to_gguf.py does.
    Returns the names written in f16 for that reason."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layers)
    matrix_type = gguf.GGMLQuantizationType[GGUF_TYPES[gguf_type][0]]
    fell_back = []
    for hf_name, w in to_hf_weights(state_dict, cfg).items():
        if hf_name.endswith("q_proj.weight"):
            w = rope_interleaved(w, cfg.n_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = rope_interleaved(w, cfg.n_kv_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        qtype = matrix_type if w.dim() == 2 else gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.Q8_0 and w.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = gguf.GGMLQuantizationType.F16
            fell_back.append(name)
        writer.add_tensor(name, gguf.quants.quantize(w.numpy(), qtype), raw_dtype=qtype)
    return fell_back


def export_gguf(checkpoint, path, gguf_type="f16", name="tinyllama"):
    """Writes the checkpoint dict (model_args, model, tokenizer) as one GGUF file at path, through a temporary
    file renamed at the end: a failed export leaves no half file and an earlier one whole. An existing file
    that is not GGUF is refused, never overwritten. Returns the names of matrices q8_0 wrote in f16."""
    gguf = import_gguf()
    if os.path.isdir(path):
        raise GGUFError(f"--gguf={path} is a directory: give a file name such as model.gguf")
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise GGUFError(f"--gguf={path} exists and is not a GGUF file; it is never overwritten")
    try:
        cfg = ModelConfig(**checkpoint["model_args"])
    except (TypeError, ValueError) as e:
        raise GGUFError(f"the checkpoint's model_args do not describe a model ({e})")
    enc = tokenizer.load_tokenizer(checkpoint["tokenizer"])
    if cfg.vocab_size != enc.n_vocab:
        raise GGUFError(
            f"the model has {cfg.vocab_size} token rows but its tokenizer {enc.n_vocab} ids; "
            "llama.cpp needs one row per token"
        )

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[GGUF_TYPES[gguf_type][1]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    for key, value in (checkpoint.get("code") or {}).items():  # where the weights came from, if recorded
        writer.add_string(f"tinyllama.code.{key}", str(value))
    add_tokenizer(writer, gguf, enc)
    fell_back = add_weights(writer, gguf, checkpoint["model"], cfg, gguf_type)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return fell_back


def open_in_llama_cpp(path, n_ctx, threads, **options):
    """The GGUF file in llama.cpp (llama-cpp-python) without ggml's extra CPU buffer types: on a CPU that
    reports AMX inside a VM that does not enable it, ggml's AMX kernels die with SIGILL, and the plain kernels
    read the same file."""
    import llama_cpp

    default = llama_cpp.llama_cpp.llama_model_default_params

    def plain_params():
        params = default()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = plain_params  # Llama() reads its parameters from it
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, verbose=False, **options)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default
