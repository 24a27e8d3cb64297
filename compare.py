"""Compare training runs side by side, and tell whether a difference is larger than the seeds' noise.

  python compare.py out/silu-* out/gelu-*            # out_dirs, or globs of them
  python compare.py out/a out/b --output=ab.svg

Prints a table (each run's best and final val bits per byte, tokens seen, wall time, the code that trained it
and the options that differ between the runs) and writes one SVG of every run's train loss and val bpb.

Runs whose options differ only in `seed`, trained by the same code, form a group, shown as the mean and
spread of their final val bpb.
Two groups differ when Welch's t-test gives p < 0.05 over their final val bpb, which needs at least two seeds
in each; otherwise the difference is within the seeds' noise, and the table says so.
"""

import glob
import hashlib
import math
import os
import sys

import torch

import runs
from configurator import UserError, configure

output = "compare.svg"  # the plot of every run's curves
configure(globals(), argv=[arg for arg in sys.argv[1:] if arg.startswith("-")])
patterns = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
SAME_ANYWAY = ("out_dir", "seed", "wandb_log", "wandb_project", "overwrite", "init_from")  # not the recipe


def run_dirs(patterns):
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        found += [m for m in matches if os.path.realpath(m) not in map(os.path.realpath, found)]
    if len(found) < 1:
        raise UserError("name the runs to compare: python compare.py out/a out/b (out_dirs or globs of them)")
    for path in found:
        if not os.path.isfile(os.path.join(path, "log.jsonl")):
            raise UserError(f"{path} is not a training run's out_dir (it has no log.jsonl)")
    return found


def read_run(path):
    """The run's log records, and its config and code version from its checkpoint (mapped, not read whole)."""
    records = runs.read_log(os.path.join(path, "log.jsonl"))
    name = next((n for n in ("ckpt.pt", "best.pt") if os.path.isfile(os.path.join(path, n))), None)
    if name is None:
        raise UserError(f"{path} has no checkpoint (ckpt.pt or best.pt) to read its options from")
    checkpoint = torch.load(os.path.join(path, name), map_location="cpu", weights_only=True, mmap=True)
    vals = [r["val_bpb"] for r in records if "val_bpb" in r]
    if not vals:
        raise UserError(f"{path}'s log has no val figures yet: compare it after its first eval")
    last = records[-1]
    diff = os.path.join(path, "code.diff")  # a dirty tree's changes to model.py and train.py
    changes = open(diff, "rb").read() if os.path.isfile(diff) else b""
    return {
        "same_code": (runs.describe_version(checkpoint.get("code")), hashlib.sha256(changes).hexdigest()),
        "path": path,
        "records": records,
        "config": checkpoint.get("config", {}),
        "code": checkpoint.get("code"),
        "best": min(vals),
        "final": vals[-1],
        "tokens": last.get("tokens", 0),
        "wall": last.get("elapsed", 0),
    }


def welch(a, b):
    """Welch's t-test: (t, two-sided p) for the means of samples a and b, each of at least two values."""
    va, vb = (sum((x - sum(s) / len(s)) ** 2 for x in s) / (len(s) - 1) / len(s) for s in (a, b))
    if va + vb == 0:
        return (math.inf, 0.0) if sum(a) / len(a) != sum(b) / len(b) else (0.0, 1.0)
    t = (sum(b) / len(b) - sum(a) / len(a)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))  # P(|T| > |t|) with dof degrees of freedom


def incomplete_beta(a, b, x):
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1 - incomplete_beta(b, a, 1 - x)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    )
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            step = 1.0
        elif i % 2:
            step = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            step = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1 / (d * step + 1 if abs(d * step + 1) > 1e-300 else 1e-300)
        c = step / c + 1 if abs(step / c + 1) > 1e-300 else 1e-300
        f *= c * d
        if abs(c * d - 1) < 1e-12:
            break
    return front * (f - 1) / a


def groups_of(found):
    """Runs grouped by all their options but seed and by the code that trained them: [(key, [runs])] in the
    order they were named. An edit of model.py or train.py is a different experiment, not another seed."""
    groups = []
    for r in found:
        options = ({k: v for k, v in r["config"].items() if k not in SAME_ANYWAY}, r["same_code"])
        for key, members in groups:
            if key == options:
                members.append(r)
                break
        else:
            groups.append((options, [r]))
    return groups


def verdict(a, b):
    """What the final val bpb of two groups of runs (lists of figures) says about their difference."""
    diff = sum(b) / len(b) - sum(a) / len(a)
    text = f"{diff:+.4f} bpb ({diff / (sum(a) / len(a)):+.2%})"
    if min(len(a), len(b)) < 2:
        return f"{text}: run at least 2 seeds of each to tell it from seed noise"
    t, p = welch(a, b)
    if p < 0.05:
        return f"{text}, Welch's t = {t:.2f}, p = {p:.3f}: larger than the seeds' spread"
    return f"{text}, Welch's t = {t:.2f}, p = {p:.2f}: not significant, within the seeds' spread"


runs.check_output(output, b"<svg", "--output")
found = [read_run(path) for path in run_dirs(patterns)]
configs = [r["config"] for r in found]
differ = sorted(
    {k for c in configs for k in c if k not in ("out_dir",) and len({repr(d.get(k)) for d in configs}) > 1}
)
width = max(len(r["path"]) for r in found)
codes = [runs.describe_version(r["code"]) for r in found]
code_width = max(map(len, codes))
head = (
    f"{'run':<{width}}  {'best bpb':>8}  {'final bpb':>9}  {'tokens':>8}  {'wall':>7}  {'code':<{code_width}}"
)
print(head + "".join(f"  {k}" for k in differ))
for r, code in zip(found, codes):
    cells = "".join(f"  {r['config'].get(k)!s:>{len(k)}}" for k in differ)
    print(
        f"{r['path']:<{width}}  {r['best']:8.4f}  {r['final']:9.4f}  {r['tokens'] / 1e6:7.2f}M  "
        f"{r['wall']:6.0f}s  "
        f"{code:<{code_width}}{cells}"
    )
groups = groups_of(found)
if any(len(members) > 1 for _, members in groups):
    print(
        "\nruns that differ only in seed (same options and code): final val bpb, mean and standard deviation"
    )
    for i, (_, members) in enumerate(groups):
        finals = [r["final"] for r in members]
        mean = sum(finals) / len(finals)
        sd = (
            math.sqrt(sum((f - mean) ** 2 for f in finals) / (len(finals) - 1))
            if len(finals) > 1
            else float("nan")
        )
        names = ", ".join(r["path"] for r in members)
        print(
            f"  {chr(65 + i)}: {len(members)} run{'s' * (len(members) > 1)}, {mean:.4f} ± {sd:.4f} "
            f"(range {min(finals):.4f}-{max(finals):.4f}): {names}"
        )
    for i in range(1, len(groups)):
        base = [r["final"] for r in groups[0][1]]
        print(f"  {chr(65 + i)} - A: {verdict(base, [r['final'] for r in groups[i][1]])}")
runs.draw([(r["path"], r["records"]) for r in found], output)
print(f"\nwrote {output}", file=sys.stderr)
