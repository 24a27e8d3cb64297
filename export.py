"""Export a checkpoint for Hugging Face transformers (a directory, hf.py) or llama.cpp (a GGUF, llamacpp.py).

  python export.py --out_dir=out/smoke --hf_dir=hf/smoke
  python export.py --out_dir=out/smoke --gguf=smoke.gguf                      # llama.cpp, Ollama, LM Studio
  python export.py --out_dir=out/smoke --gguf=smoke-q8.gguf --gguf_type=q8_0
  python export.py --out_dir=out/smoke --ckpt=ckpt.pt --hf_dir=hf/smoke-latest --gguf=smoke-latest.gguf

Give --hf_dir, --gguf or both. transformers loads the directory with no code of ours
(AutoModelForCausalLM.from_pretrained("hf/smoke")); llama.cpp runs the file (llama-completion -m smoke.gguf).
Exporting over an earlier export replaces it whole; a directory holding other files, or a file that is not
GGUF, is refused. The GGUF export needs the package gguf (pip install gguf).
"""

import os
import sys

from checkpoint import checkpoint_path, load_checkpoint
from configurator import configure, fail
from hf import export_hf
from llamacpp import GGUF_TYPES, export_gguf

out_dir = "out"  # the training run to export
ckpt = ""  # file in out_dir; '' takes best.pt when it exists, else ckpt.pt
hf_dir = ""  # writes the Hugging Face transformers directory here
gguf = ""  # writes one GGUF file here, for llama.cpp, Ollama and LM Studio
# f16 by default: half of f32's size, its logits off ours by under 0.1% of their spread, at any shape; q8_0
# is half again at about 1% (f16 for matrices whose rows are not a multiple of 32); llama.cpp's
# llama-quantize makes smaller types from the f16 file
gguf_type = "f16"  # the GGUF's matrices (norms stay f32)
configure(globals(), checks={"gguf_type": tuple(GGUF_TYPES)})

if not hf_dir and not gguf:
    fail("give --hf_dir=DIR (Hugging Face transformers), --gguf=FILE (llama.cpp) or both")
if hf_dir and gguf and os.path.abspath(hf_dir) == os.path.abspath(gguf):
    fail(f"--hf_dir and --gguf name the same path ({gguf}): the directory and the file need their own")
path = checkpoint_path(out_dir, ckpt)
target = gguf or hf_dir  # named by a write that fails
try:
    checkpoint = load_checkpoint(path)
    if gguf:  # first: its refusals (no gguf package, a file that is not GGUF) all come before it writes
        in_f16 = export_gguf(checkpoint, gguf, gguf_type, name=os.path.basename(os.path.abspath(out_dir)))
        if in_f16:
            print(f"note: {len(in_f16)} matrices in f16, their rows not a multiple of 32", file=sys.stderr)
        print(f"exported {path} to {gguf} ({gguf_type}): run it with llama-completion -m {gguf}")
    if hf_dir:
        target = hf_dir
        export_hf(checkpoint, hf_dir)
        print(
            f"exported {path} to {hf_dir}: load it with transformers' "
            f"AutoModelForCausalLM.from_pretrained({hf_dir!r}) and AutoTokenizer.from_pretrained({hf_dir!r})"
        )
except OSError as e:
    fail(f"cannot write {target}: {e.strerror or e}")
