"""Checkpoints: written atomically, read without executing code, with one-line errors.

A checkpoint is a dict of plain data: the format tag, model_args (ModelConfig's fields), the model and
optimizer state, iter_num, best_val_loss, the full training config, the tokenizer spec, and RNG states.
"""
import os
import torch

from model import Llama, ModelConfig

FORMAT = "tinyllama-checkpoint-v1"


class CheckpointError(Exception):
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


def load_checkpoint(path, map_location="cpu"):
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: train one first (python train.py --out_dir=...)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding code: never a pickle traceback
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); it may be corrupt or from another program")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} has an unknown checkpoint format ({found!r}, expected {FORMAT!r}); "
                              "for Hugging Face models use --hf_dir=PATH")
    return checkpoint


def clean_state_dict(state_dict):
    """Drops the `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes other tools leave in."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            key = key.removeprefix(prefix)
        clean[key] = value
    return clean


def model_from_checkpoint(checkpoint):
    model = Llama(ModelConfig(**checkpoint["model_args"]))
    model.load_state_dict(clean_state_dict(checkpoint["model"]))
    return model
