"""Export a checkpoint as a Hugging Face transformers LlamaForCausalLM directory (the conversion lives in hf.py).

  python export.py --out_dir=out/smoke --hf_dir=hf/smoke
  python export.py --out_dir=out/smoke --ckpt=ckpt.pt --hf_dir=hf/smoke-latest

transformers then loads it with no code of ours: AutoModelForCausalLM.from_pretrained("hf/smoke").
Exporting over an earlier export replaces it whole; a directory holding other files is refused.
"""

from checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from configurator import configure, fail
from hf import HFError, export_hf
from tokenizer import TokenizerError

out_dir = "out"  # the training run to export
ckpt = ""  # file in out_dir; '' takes best.pt when it exists, else ckpt.pt
hf_dir = "hf"  # writes the Hugging Face directory here

if __name__ == "__main__":
    configure(globals())
    path = checkpoint_path(out_dir, ckpt)
    try:
        export_hf(load_checkpoint(path), hf_dir)
    except (CheckpointError, HFError, TokenizerError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {hf_dir}: {e.strerror or e}")
    print(
        f"exported {path} to {hf_dir}: load it with transformers' "
        f"AutoModelForCausalLM.from_pretrained({hf_dir!r}) and AutoTokenizer.from_pretrained({hf_dir!r})"
    )
