"""Runs train.py under torchrun, then saves this rank's final weights so a test can compare ranks."""

import os
import runpy
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
train = runpy.run_path(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py"), run_name="__main__"
)
torch.save(train["raw_model"].state_dict(), os.path.join(train["out_dir"], f"rank{train['rank']}.pt"))
with open(os.path.join(train["out_dir"], f"rank{train['rank']}.pid"), "w") as f:  # which rank holds the lock
    f.write(str(os.getpid()))
