"""Device and dtype: one rule for every script, and the GPUs' peak FLOPs for MFU.

auto device: CUDA, then MPS, then CPU. auto dtype:  bfloat16 on CUDA where supported, else float16 (train.py
adds a GradScaler); float32 elsewhere.
"""

import os

import torch

from configurator import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# bf16 dense tensor-core peaks, FLOP/s, matched in order against torch.cuda.get_device_name()
PEAK_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H20", 148e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def choose(device="", dtype="", flag="--device"):
    """(device, dtype name) for the options as given ('' = automatic); UserError says what is wrong, naming
    the device option as flag."""
    if not device:
        device = (
            "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        )
    kind = device.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise UserError(f"{flag}={device}: use cuda, cuda:N, mps or cpu (or leave it empty to choose)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"{flag}={device}, but this machine has no CUDA GPU (or torch was built without CUDA): "
            f"use {flag}=cpu or leave {flag} empty"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag}={device}, but MPS is not available here: use {flag}=cpu")
    if not dtype:
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if kind == "cuda" else "float32"
    if dtype not in DTYPES:
        raise UserError(f"--dtype={dtype}: use float32, bfloat16 or float16 (or leave it empty to choose)")
    if dtype == "float16" and kind == "cpu":
        raise UserError("--dtype=float16 is for GPUs; on CPU use float32 (or bfloat16)")
    return device, dtype


def peak_flops(device):
    """The GPU's bf16 dense peak in FLOP/s; None on CPU, MPS or an unknown GPU."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def total_memory(device):
    """The device's memory in bytes: a GPU's own, the machine's RAM for the CPU; None where unknown (MPS)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if kind == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None
