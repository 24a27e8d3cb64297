"""Print stories from a trained model.

  python sample.py --out_dir=out/smoke
  python sample.py --out_dir=out/smoke --start="Once upon a time" --num_samples=3 --temperature=0
  python sample.py --out_dir=out/smoke --start=FILE:prompt.txt --top_k=40 --seed=7
  python sample.py --hf_dir=hf/smoke                  # a Hugging Face Llama directory

The model and its tokenizer both come from the checkpoint, so a model trained on its own vocabulary
decodes with it. Every prompt is preceded by <|endoftext|>, as every story in the training data is;
an empty prompt starts a fresh story. Generation stops at <|endoftext|> or after max_new_tokens.
"""
import codecs
import os
import sys

import torch

import tokenizer
from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from configurator import configure, fail
from export import HFError, load_hf
from model import DTYPES, auto_device

# -----------------------------------------------------------------------------
out_dir = "out"  # reads out_dir/ckpt.pt
hf_dir = ""  # or a local Hugging Face Llama directory instead
start = ""  # the prompt, or FILE:path to read it from a file
num_samples = 1
max_new_tokens = 256
temperature = 0.7  # 0: greedy
top_k = 0  # 0: off
top_p = 0.9  # 1.0: off
repetition_penalty = 1.1  # 1.0: off
seed = 1337
device = ""  # '' picks cuda, then mps, then cpu
dtype = ""  # '' picks bfloat16 on CUDA where supported, else float32
compile = False
stream = True  # print tokens as they come
# -----------------------------------------------------------------------------
configure(globals())
# -----------------------------------------------------------------------------


if temperature < 0:
    fail(f"--temperature={temperature} must be >= 0 (0 is greedy)")
if not 0 < top_p <= 1:
    fail(f"--top_p={top_p} must be in (0, 1] (1 turns it off)")
if top_k < 0:
    fail(f"--top_k={top_k} must be >= 0 (0 turns it off)")
if repetition_penalty <= 0:
    fail(f"--repetition_penalty={repetition_penalty} must be > 0 (1 turns it off)")
if num_samples < 1 or max_new_tokens < 1:
    fail(f"--num_samples={num_samples} and --max_new_tokens={max_new_tokens} must be at least 1")
if start.startswith("FILE:"):
    if not os.path.isfile(start[5:]):
        fail(f"prompt file '{start[5:]}' not found")
    start = open(start[5:], encoding="utf-8").read()
if not device:
    device = auto_device()
if not dtype:
    dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
if dtype not in DTYPES:
    fail(f"--dtype={dtype}: use float32, bfloat16 or float16")

try:
    if hf_dir:
        model, spec = load_hf(hf_dir)
    else:
        checkpoint = load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
        model, spec = model_from_checkpoint(checkpoint), checkpoint["tokenizer"]
        del checkpoint
    enc = tokenizer.load_tokenizer(spec)
except (CheckpointError, HFError, tokenizer.TokenizerError) as e:
    fail(str(e))
model.to(device=device, dtype=DTYPES[dtype])
model.eval()
if compile:
    model.forward = torch.compile(model.forward, dynamic=True)

prompt = [enc.eot_token] + enc.encode(start, allowed_special={tokenizer.EOT})
context = model.config.max_seq_len
if len(prompt) >= context:
    print(f"warning: the prompt has {len(prompt)} tokens and the model's context is {context}; "
          f"keeping its last {context - 1}", file=sys.stderr)
    prompt = prompt[-(context - 1):]
idx = torch.tensor([prompt], dtype=torch.long, device=device)

torch.manual_seed(seed)
for i in range(num_samples):
    if i:
        print("\n" + "-" * 72)
    print(start, end="", flush=True)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # tokens may split a character
    pieces = []
    for token in model.stream(idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, enc.eot_token):
        if token.item() == enc.eot_token:
            break
        pieces.append(text.decode(enc.decode_single_token_bytes(token.item())))
        if stream:
            print(pieces[-1], end="", flush=True)
    pieces.append(text.decode(b"", final=True))
    print(pieces[-1] if stream else "".join(pieces), flush=True)
