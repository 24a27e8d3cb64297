"""Checkpoints: written atomically, read without executing code, with one-line errors; checkpoint to model.

A checkpoint is a dict of plain data: the format tag, model_args (ModelConfig's fields), the model state, the
tokenizer spec, iter_num and the val figures; train.py's ckpt.pt adds the optimizer and scaler state, the full
training config and RNG states, while best.pt (the lowest val loss so far) holds no optimizer.
"""

import os
import sys

import torch

from configurator import UserError
from model import Llama, ModelConfig
from runs import code_changed

FORMAT = "tinyllama-checkpoint-v2"  # v2: q/k/v and gate/up fused
REQUIRED = ("model_args", "model", "tokenizer")


class CheckpointError(UserError):
    pass


def save_checkpoint(checkpoint, path):
    """Temporary file, fsync, rename: a kill at any moment leaves the previous checkpoint loadable."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **checkpoint}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _why_unreadable(path, error):
    if os.path.getsize(path) == 0:
        return "it is empty (0 bytes), perhaps from a full disk or a copy that failed"
    text = " ".join(str(error).split())
    if "weights_only" in text or "Unsupported global" in text:
        return "it holds Python objects that safe loading (weights_only=True) refuses to run"
    if "zip" in text.lower() or "EOF" in text or "truncated" in text.lower():
        return f"it is truncated or not a torch file ({text[:200]})"
    return f"{type(error).__name__}: {text[:200]}"


def load_checkpoint(path, map_location="cpu", warn=True):
    """The checkpoint dict at path, checked; warn: say on stderr if model.py changed since it was written."""
    if os.path.isdir(path) or not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: train one first (python train.py --out_dir=...)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding code: never a pickle traceback
        raise CheckpointError(f"{path} is not a readable checkpoint: {_why_unreadable(path, e)}")
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
    if found != FORMAT:
        raise CheckpointError(
            f"{path} has an unknown checkpoint format ({found!r}, expected {FORMAT!r}); "
            "for Hugging Face models use --hf_dir=PATH"
        )
    missing = [key for key in REQUIRED if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}: it was not written by train.py"
        )
    changed = code_changed(checkpoint.get("code"))
    if warn and changed:
        print(f"warning: {path}: {changed}", file=sys.stderr)
    return checkpoint


def load_for_resume(path, device, options, allow_code_change=False, warn=True):
    """The full checkpoint a run continues from: with its optimizer state, written under this model.py (or
    allow_code_change, with a warning), and a model whose shape agrees with every option in options."""
    checkpoint = load_checkpoint(path, map_location=device, warn=False)
    if "optimizer" not in checkpoint:
        raise CheckpointError(
            f"{path} holds no optimizer state: start from its weights in a new out_dir instead"
        )
    changed = code_changed(checkpoint.get("code"))
    if changed and not allow_code_change:
        raise CheckpointError(
            f"model.py changed since {path} was written: {changed}; resume anyway with "
            "--allow_code_change=True, or train into another --out_dir"
        )
    if changed and warn:
        print(f"warning: {path}: {changed}", file=sys.stderr)
    for key, value in options.items():
        if value != checkpoint["config"].get(key, value):
            raise CheckpointError(
                f"--{key}={value} conflicts with {path}, whose model has {key}="
                f"{checkpoint['config'][key]!r}; drop the option to resume, or train into another --out_dir"
            )
    return checkpoint


def checkpoint_path(out_dir, ckpt=""):
    """out_dir/ckpt if given, else out_dir/best.pt when it exists, else out_dir/ckpt.pt; said on stderr."""
    name = ckpt or ("best.pt" if os.path.isfile(os.path.join(out_dir, "best.pt")) else "ckpt.pt")
    path = os.path.join(out_dir, name)
    print(f"loading {path}", file=sys.stderr)
    return path


def model_from_checkpoint(checkpoint, **overrides):
    """The Llama a checkpoint describes, with its weights; overrides: ModelConfig fields (dropout, ...)."""
    try:
        model = Llama(ModelConfig(**{**checkpoint["model_args"], **overrides}))
        model.load_state_dict(checkpoint["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint's model does not load ({' '.join(str(e).split())[:300]})")
    return model


def load_model(out_dir="", ckpt="", hf_dir=""):
    """(model, tokenizer spec, facts) from a training run's checkpoint, or from a HF Llama directory.

    facts: where the model came from, and for our checkpoints the iteration, the val figures, the code that
    trained it and the data_dir it was trained on (None if the checkpoint holds no training config).
    """
    if hf_dir:
        from hf import load_hf

        model, spec = load_hf(hf_dir)
        return model, spec, {"source": hf_dir}
    path = checkpoint_path(out_dir, ckpt)
    checkpoint = load_checkpoint(path)
    facts = {
        "source": path,
        "iter_num": checkpoint.get("iter_num"),
        **{k: checkpoint[k] for k in ("val_loss", "val_bpb", "code") if k in checkpoint},
        "data_dir": (checkpoint.get("config") or {}).get("data_dir"),
    }
    return model_from_checkpoint(checkpoint), checkpoint["tokenizer"], facts
