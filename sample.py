"""Print stories from a trained model.

  python sample.py --out_dir=out/smoke
  python sample.py --out_dir=out/smoke --start="Once upon a time" --num_samples=3 --temperature=0
  python sample.py --out_dir=out/smoke --start=FILE:prompt.txt --top_k=40 --seed=7
  python sample.py --hf_dir=hf/smoke                  # a Hugging Face Llama directory

The model and its tokenizer both come from the checkpoint, so a model trained on its own vocabulary decodes
with it. Every prompt is preceded by <|endoftext|>, as every story in the training data is; an empty prompt
starts a fresh story. Generation stops at <|endoftext|> or after max_new_tokens (Ctrl-C stops it sooner). Only
the stories go to stdout; which checkpoint was loaded and the speed go to stderr.
"""

import codecs
import sys
import time

import torch

from configurator import SAMPLING, SAMPLING_CHECKS, configure, fail
from fastdecode import QUANTIZE, load_for_decoding
from generate import encode_prompt
from generate import stream as stream_tokens

# -----------------------------------------------------------------------------
out_dir = "out"  # the training run to sample from
ckpt = ""  # file in out_dir; '' takes best.pt when it exists, else ckpt.pt
hf_dir = ""  # or a local Hugging Face Llama directory instead
start = ""  # the prompt, or FILE:path to read it from a file
num_samples = 1  # decoded together as one batch; sample i is seeded seed + i
max_new_tokens = SAMPLING["max_new_tokens"]
temperature = SAMPLING["temperature"]  # 0: greedy
top_k = SAMPLING["top_k"]  # 0: off
top_p = SAMPLING["top_p"]  # 1.0: off
repetition_penalty = SAMPLING["repetition_penalty"]  # 1.0: off
seed = 1337
device = ""  # '' picks cuda, then mps, then cpu
dtype = ""  # '' picks bfloat16 on CUDA where supported, else float32
compile = (
    None  # the compiled decode step: None uses it once built for this checkpoint, True builds it, False never
)
quantize = ""  # CPU: bf16 (every matrix) or int8 (the head; bf16 for the rest) decode faster, close to fp32
stream = True  # print the story as it is written (one sample; several are printed when all are done)
# -----------------------------------------------------------------------------
configure(
    globals(),
    checks={
        **SAMPLING_CHECKS,
        "num_samples": "[1, inf)",
        "compile": (None, True, False),
        "quantize": QUANTIZE,
    },
)

if start.startswith("FILE:"):
    try:
        with open(start[5:], encoding="utf-8") as f:
            start = f.read()
    except UnicodeDecodeError as e:
        fail(
            f"prompt file '{start[5:]}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start})"
        )
    except OSError as e:
        fail(f"cannot read prompt file '{start[5:]}': {e.strerror}")
model, enc, _, step = load_for_decoding(out_dir, ckpt, hf_dir, device, dtype, quantize, compile, num_samples)
prompt, warning = encode_prompt(enc, start, model.config.max_seq_len)
if warning:
    print(f"warning: {warning}", file=sys.stderr)
idx = torch.tensor([prompt] * num_samples, dtype=torch.long, device=model.embed_tokens.weight.device)


TERMINAL = sys.stdout.isatty()


def shown(text):
    """The text as it is, or on a terminal, which would obey the escape codes a prompt or a model can hold,
    with control characters other than newlines and tabs shown escaped (as \x1b)."""
    if not TERMINAL:
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


live = stream and num_samples == 1
texts = [start] * num_samples
decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(num_samples)]
finished = [False] * num_samples
if live:
    print(shown(start), end="", flush=True)
began, generated = time.perf_counter(), 0
for tokens in stream_tokens(
    model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, enc.eot_token, seed, step=step
):
    for i, token in enumerate(tokens[:, 0].tolist()):
        if finished[i] or token == enc.eot_token:
            finished[i] = True
            continue
        piece = decoders[i].decode(enc.decode_single_token_bytes(token))  # a token may end mid-character
        texts[i] += piece
        generated += 1
        if live:
            print(shown(piece), end="", flush=True)
seconds = time.perf_counter() - began
for i in range(num_samples):
    tail = decoders[i].decode(b"", final=True)
    if live:
        print(shown(tail), flush=True)
    else:
        print(("\n" + "-" * 72 + "\n" if i else "") + shown(texts[i] + tail), flush=True)
samples = f"{num_samples} sample{'s' if num_samples > 1 else ''}"
print(
    f"achieved tok/s: {generated / seconds:.1f} ({generated} tokens in {seconds:.2f} s, {samples})",
    file=sys.stderr,
)
