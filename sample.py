"""Print stories from a trained model.

  python sample.py --out_dir=out/smoke
  python sample.py --out_dir=out/smoke --start="Once upon a time" --num_samples=3 --temperature=0
  python sample.py --out_dir=out/smoke --start=FILE:prompt.txt --top_k=40 --seed=7
  python sample.py --hf_dir=hf/smoke                  # a Hugging Face Llama directory

The model and its tokenizer both come from the checkpoint, so a model trained on its own vocabulary
decodes with it. Every prompt is preceded by <|endoftext|>, as every story in the training data is;
an empty prompt starts a fresh story. Generation stops at <|endoftext|> or after max_new_tokens.
Only the stories go to stdout; which checkpoint was loaded and the speed go to stderr.
"""

import codecs
import sys
import time

import torch

import tokenizer
from checkpoint import CheckpointError, load_model
from configurator import configure, fail
from device import DTYPES, choose
from generate import (
    DEFAULTS,
    check_compile,
    check_quantize,
    check_settings,
    decode_step,
    encode_prompt,
    prepare_for_decoding,
)
from generate import (
    stream as stream_tokens,
)
from hf import HFError

# -----------------------------------------------------------------------------
out_dir = "out"  # the training run to sample from
ckpt = ""  # file in out_dir; '' takes best.pt when it exists, else ckpt.pt
hf_dir = ""  # or a local Hugging Face Llama directory instead
start = ""  # the prompt, or FILE:path to read it from a file
num_samples = 1  # decoded together as one batch; sample i is seeded seed + i
max_new_tokens = DEFAULTS["max_new_tokens"]
temperature = DEFAULTS["temperature"]  # 0: greedy
top_k = DEFAULTS["top_k"]  # 0: off
top_p = DEFAULTS["top_p"]  # 1.0: off
repetition_penalty = DEFAULTS["repetition_penalty"]  # 1.0: off
seed = 1337
device = ""  # '' picks cuda, then mps, then cpu
dtype = ""  # '' picks bfloat16 on CUDA where supported, else float32
compile = None  # the compiled decode step: None uses it when already built for this checkpoint, True builds it once (CPU: 30-60 s, cached), False never
quantize = ""  # CPU: '' decodes with the checkpoint's fp32 weights; bf16 (every matrix) or int8 (the head; bf16 for the rest) are faster and close to it
stream = True  # print the story as it is written (one sample only; several are printed when all are done)
# -----------------------------------------------------------------------------
configure(globals())

try:
    check_settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens)
    check_compile(compile)
    device, dtype = choose(device, dtype)
    check_quantize(quantize, device)
except ValueError as e:
    fail(str(e))
if num_samples < 1:
    fail(f"--num_samples={num_samples} must be at least 1")
if start.startswith("FILE:"):
    try:
        with open(start[5:], encoding="utf-8") as f:
            start = f.read()
    except FileNotFoundError:
        fail(f"prompt file '{start[5:]}' not found")
    except UnicodeDecodeError as e:
        fail(
            f"prompt file '{start[5:]}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        )
    except OSError as e:
        fail(f"cannot read prompt file '{start[5:]}': {e.strerror}")

try:
    model, spec, _ = load_model(out_dir, ckpt, hf_dir)
    enc = tokenizer.load_tokenizer(spec)
except (CheckpointError, HFError, tokenizer.TokenizerError) as e:
    fail(str(e))
model = prepare_for_decoding(model.to(device=device, dtype=DTYPES[dtype]), quantize)
step = decode_step(model, num_samples, compile)

prompt, warning = encode_prompt(enc, start, model.config.max_seq_len)
if warning:
    print(f"warning: {warning}", file=sys.stderr)
idx = torch.tensor([prompt] * num_samples, dtype=torch.long, device=device)

live = stream and num_samples == 1
texts = [start] * num_samples
decoders = [
    codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(num_samples)
]  # tokens may split a character
finished = [False] * num_samples
if live:
    print(start, end="", flush=True)
began, generated = time.perf_counter(), 0
for tokens in stream_tokens(
    model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, enc.eot_token, seed, step=step
):
    for i, token in enumerate(tokens[:, 0].tolist()):
        if finished[i] or token == enc.eot_token:
            finished[i] = True
            continue
        piece = decoders[i].decode(enc.decode_single_token_bytes(token))
        texts[i] += piece
        generated += 1
        if live:
            print(piece, end="", flush=True)
seconds = time.perf_counter() - began
for i in range(num_samples):
    tail = decoders[i].decode(b"", final=True)
    if live:
        print(tail, flush=True)
    else:
        print(("\n" + "-" * 72 + "\n" if i else "") + texts[i] + tail, flush=True)
print(
    f"achieved tok/s: {generated / seconds:.1f} ({generated} tokens in {seconds:.2f} s, "
    f"{num_samples} sample{'s' if num_samples > 1 else ''})",
    file=sys.stderr,
)
