"""A model made ready, and fast, for decoding: the one loading path of sample.py, eval.py and serve.py,
weights in fewer bytes (--quantize) and the compiled one-token step (--compile).

  model, enc, facts, step = load_for_decoding(out_dir="out/smoke", quantize="int8", compile=None)
  for tokens in generate.stream(model, idx, 200, step=step): ...

A decode step reads every weight once per token, so on a CPU it runs at the speed of memory: fewer bytes per
weight, and a step that is one compiled program rather than ~150 dispatched ops, are what make it fast.
"""

import getpass
import hashlib
import os
import sys
import tempfile
import time

import torch
import torch.nn as nn

import tokenizer
from checkpoint import load_model
from configurator import UserError
from device import DTYPES, choose, total_memory
from generate import new_cache

QUANTIZE = ("", "bf16", "int8")


def load_for_decoding(
    out_dir="", ckpt="", hf_dir="", device="", dtype="", quantize="", compile=None, batch_size=1
):
    """(model, tokenizer, facts, step): the checkpoint's (or Hugging Face directory's) model on the device in
    the dtype, changed for decoding (prepare_for_decoding), and its compiled step under the scripts' --compile
    rule (decode_step; None: decode eagerly). facts: where the model came from, its parameters, context,
    vocabulary and tokenizer kind. Raises UserError for a mistake in the options or the files."""
    device, dtype = choose(device, dtype)
    if quantize and device.split(":")[0] != "cpu":
        raise UserError(
            f"--quantize={quantize} is for decoding on the CPU; on {device}, --dtype=bfloat16 is the fast one"
        )
    model, spec, facts = load_model(out_dir, ckpt, hf_dir)
    enc = tokenizer.load_tokenizer(spec)
    cfg = model.config  # a sequence's KV cache, and its logits' working copies while sampling
    need = batch_size * (
        2 * cfg.n_layers * cfg.n_kv_heads * (cfg.max_seq_len + 1) * cfg.head_dim * 4 + 16 * cfg.vocab_size
    )
    if need > (total_memory(device) or float("inf")):
        raise UserError(
            f"{batch_size:,} sequences at once need about {need / 2**30:,.0f} GiB for their KV caches, "
            f"more than the {total_memory(device) / 2**30:,.0f} GiB here: decode fewer (--num_samples)"
        )
    facts = {
        **facts,
        "parameters": model.num_params(),  # before a tied head gets its own copy, or quantizing drops them
        "context": model.config.max_seq_len,
        "vocab_size": model.config.vocab_size,
        "tokenizer": tokenizer.spec_kind(spec),
        "spec": spec,
        "device": device,
        "dtype": dtype,
    }
    model = prepare_for_decoding(model.to(device=device, dtype=DTYPES[dtype]), quantize)
    return model, enc, facts, decode_step(model, batch_size, compile)


def prepare_for_decoding(model, quantize=""):
    """A one-time change of layout for sampling: eval mode, no gradients, on CPU every matrix stored
    transposed (the same values, the same modules), and with quantize the matrices in fewer bytes.

    MKL multiplies one row by a matrix stored (in, out) at about three times the bandwidth of (out, in), and
    F.linear on the transposed storage takes that path. A tied head gets its own copy, so the embedding
    lookup keeps its rows contiguous. quantize='bf16' stores every matrix in bf16 (BF16Linear), 'int8' in int8
    (Int8Linear), half of bf16's bytes, and inductor's int8 kernel reads them faster than its bf16 one. The
    embedding stays as it is (one row a token). A quantized model is for decoding only: its matrices are
    buffers, so num_params leaves them out and forward(idx, targets) fails.
    """
    model.eval().requires_grad_(False)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if quantize:
                low = Int8Linear if quantize == "int8" else BF16Linear
                setattr(parent, name, low(child.weight))
            elif child.weight.device.type == "cpu":
                child.weight = nn.Parameter(child.weight.t().contiguous().t(), requires_grad=False)
    return model


class BF16Linear(nn.Module):
    """A matrix stored in bf16 (half of fp32's bytes). Its input is rounded to bf16, the product is summed in
    fp32 and handed back in the input's dtype, rounded to bf16: autocast's numerics, for one matrix."""

    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())

    def forward(self, x):
        return nn.functional.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


class Int8Linear(nn.Module):
    """A matrix in int8 (a quarter of fp32's bytes) with a bf16 scale per output row: w = q * scale, where
    scale is the row's largest |w| / 127. The product is torch._weight_int8pack_mm on the bf16-rounded input,
    which inductor compiles into its own int8 kernel; the result comes back in the input's dtype.

    That kernel reads rows in blocks of 16 columns and fails (wrong sums, or a crash) on any other width, so
    rows are padded with zero columns to a multiple of 64 (a cache line of int8), and the input with zeros.
    """

    def __init__(self, weight):
        super().__init__()
        w = weight.detach().float()
        scales = (w.abs().amax(1) / 127).clamp(min=1e-30).to(torch.bfloat16)  # a row of zeros stays zeros
        q = (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.pad = -w.shape[1] % 64
        self.register_buffer("weight", nn.functional.pad(q, (0, self.pad)).contiguous())
        self.register_buffer("scales", scales)

    def forward(self, x):
        rows = nn.functional.pad(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), (0, self.pad))
        return torch._weight_int8pack_mm(rows, self.weight, self.scales).view(*x.shape[:-1], -1).to(x.dtype)


# ----------------------------------------------------------------------------- the compiled decode step


def decode_step(model, batch_size, compile=None):
    """The scripts' --compile: None takes the compiled step when it is built already (else None, with a note
    on stderr saying how to build it), True builds it when needed, False never. A compile that fails is
    said on stderr and gives None: decoding goes on eagerly."""
    if compile is False:
        return None
    began = time.perf_counter()
    try:
        step = compile_for_decoding(model, batch_size, build=compile is True)
    except RuntimeError as e:
        print(f"warning: {e}; decoding eagerly", file=sys.stderr)
        return None
    if step is not None and compile:
        print(f"compiled decode step ready in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    elif step is None and next(model.parameters()).device.type == "cpu":
        print(
            "note: decoding eagerly; --compile=True builds this checkpoint's compiled decode step once "
            "(a minute at most), and later runs use it by themselves",
            file=sys.stderr,
        )
    return step


def compile_for_decoding(model, batch_size, build=True):
    """The one-token decode step, compiled: step(idx, cache, pos) gives the model's logits for (batch_size, 1)
    tokens at the int position pos, writing their keys and values into the cache as the model does.

    On CPU it is an AOTInductor package: max-autotune with inductor's own matrix kernels (they use every core
    for a single row, where MKL's use one) and the cache's length up to pos as its one dynamic size, so
    attention reads only the filled part. It is built once for these weights, shape, batch size and thread
    count and cached under TORCHINDUCTOR_CACHE_DIR; later runs load it. build=False returns None unless it is
    cached. On GPUs it is torch.compile with CUDA graphs (mode="reduce-overhead"), compiled in each process:
    static shapes, a tensor position and attention over the whole cache, masked. Raises RuntimeError when
    compiling or loading fails; with build=True a package that cannot be loaded is built again.
    """
    device = next(model.parameters()).device.type
    if device != "cpu":  # nothing is cached off the CPU: build or nothing
        if not build:
            return None
        if device != "cuda":
            raise RuntimeError(f"there is no compiled decode step for {device}")
        step = static_step(model, mode="reduce-overhead")
        try:  # compile now, on a scratch cache, so that a failure is said here and not at the first token
            step(torch.zeros(batch_size, 1, dtype=torch.long, device="cuda"), new_cache(model, batch_size), 1)
        except Exception as e:
            raise compile_error(e) from e
        return step
    if not build and not (os.path.isdir(package_dir()) and os.listdir(package_dir())):
        return None  # nothing was ever built here: no need to hash the weights to know it
    path = package_path(model, batch_size)
    if os.path.exists(path):
        try:
            return load_package(path)
        except RuntimeError:
            if not build:
                raise
    elif not build:
        return None
    build_package(model, batch_size, path)  # replaces one that cannot be loaded
    return load_package(path)


def static_step(model, **compile_options):
    """The decode step as torch.compile(model, **compile_options) sees it with static shapes: the position
    as a tensor, attention over the whole cache (masked), and the cache buffers marked as fixed addresses
    (CUDA graphs replay those), so one graph serves every position."""
    compiled = torch.compile(model, fullgraph=True, **compile_options)

    def step(idx, cache, pos):
        for t in (t for kv in cache for t in kv):
            torch._dynamo.mark_static_address(t)
        return compiled(idx, cache=cache, pos=torch.tensor(pos, device=idx.device))

    return step


class DecodeStep(nn.Module):
    """What is exported: the model's forward with the cache as flat inputs it writes in place, and the
    position as the length of an empty tensor (a package's inputs are tensors; a size can be dynamic)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, length, *cache):
        return self.model(idx, cache=list(zip(cache[::2], cache[1::2])), pos=length.shape[0] - 1)


def first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]


def compile_error(error):
    """A failed compile (no C++ compiler, an unsupported op, no Triton), its cause in one line."""
    return RuntimeError(f"compiling the decode step failed ({type(error).__name__}: {first_line(error)})")


def package_path(model, batch_size):
    """The cached package's file: named by a hash of all that the compiled code depends on."""
    capability = torch.backends.cpu.get_cpu_capability()
    key = hashlib.sha256(
        repr((torch.__version__, capability, torch.get_num_threads(), model.config, batch_size)).encode()
    )
    for source in (__file__, sys.modules[type(model).__module__].__file__):  # this code and the model's
        with open(source, "rb") as f:
            key.update(f.read())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().contiguous().view(torch.uint8).numpy())
    return os.path.join(package_dir(), key.hexdigest()[:32] + ".pt2")


def compiler_cache():
    """Inductor's cache directory, by its own rule (without importing inductor)."""
    user_dir = f"torchinductor_{getpass.getuser()}"
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(tempfile.gettempdir(), user_dir)


def compiler_cache_writable():
    """Whether torch.compile can write its cache: the directory, or the nearest one above it that exists."""
    path = compiler_cache()
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


def package_dir():
    """decode/ in inductor's own cache directory, so clearing one clears both."""
    return os.path.join(compiler_cache(), "decode")


def build_package(model, batch_size, path):
    idx, length = torch.zeros(batch_size, 1, dtype=torch.long), torch.empty(min(8, model.config.max_seq_len))
    cache = [t for kv in new_cache(model, batch_size) for t in kv]
    dynamic = (
        None,
        {0: torch.export.Dim("length", min=2, max=model.config.max_seq_len)},
        (None,) * len(cache),
    )
    tmp = f"{path[: -len('.pt2')]}.{os.getpid()}.tmp.pt2"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with torch.no_grad():
            program = torch.export.export(DecodeStep(model), (idx, length, *cache), dynamic_shapes=dynamic)
            options = {"max_autotune": True, "max_autotune_gemm_backends": "CPP", "freezing": True}
            torch._inductor.aoti_compile_and_package(program, package_path=tmp, inductor_configs=options)
        os.replace(tmp, path)  # whole or not at all: another process may be loading it
    except Exception as e:  # a missing compiler, an unsupported op, a cache directory we cannot write
        raise compile_error(e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_package(path):
    """The package as a step; AOTInductor's documented loader (importing it costs about a second)."""
    from torch._inductor import aoti_load_package

    try:
        package = aoti_load_package(path)
    except RuntimeError as e:
        raise RuntimeError(
            f"the compiled decode step {path} cannot be loaded ({first_line(e)}); --compile=True rebuilds it"
        ) from e
    return lambda idx, cache, pos: package(idx, torch.empty(pos + 1), *(t for kv in cache for t in kv))
