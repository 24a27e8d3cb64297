"""A training run's directory: one run at a time in it, its log.jsonl, the plot of its curves, and the version
of the code that trained it. train.py writes these; compare.py and the loaders read them.

  out_dir/lock        held by the training process (flock: the kernel releases it when the process dies)
  out_dir/log.jsonl   one JSON object per log line: {iter, tokens, loss, ...} or {iter, tokens, val_loss, ...}
  out_dir/loss.svg    train loss and val bits per byte against tokens, redrawn at each eval
  out_dir/code.diff   model.py's and train.py's changes against the git commit, when the tree was dirty
"""

import fcntl
import hashlib
import html
import json
import math
import os
import subprocess

from configurator import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")


# ----------------------------------------------------------------------------- one run per out_dir


def lock(out_dir):
    """Holds out_dir/lock for as long as this process lives, or raises UserError naming the process holding
    it.

    flock, not a file's existence: the kernel drops the lock when its process ends, even by SIGKILL."""
    handle = open(os.path.join(out_dir, "lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise UserError(
            f"{out_dir} is in use by a training run ({holder}): wait for it, or train into another --out_dir"
        )
    handle.truncate(0)
    handle.write(f"PID {os.getpid()}\n")
    handle.flush()
    return handle  # the lock lasts while this object does


def prepare(out_dir, iter_num, code):
    """The out_dir made ready for a run starting at iter_num: created, locked (keep the returned lock), a
    killed run's temporary files gone, the log restarted and code.diff written; UserError if it cannot be."""
    for name in ("ckpt.pt", "best.pt", "log.jsonl", "loss.svg", "code.diff", "lock"):
        if os.path.lexists(os.path.join(out_dir, name)) and not os.path.isfile(os.path.join(out_dir, name)):
            raise UserError(
                f"{os.path.join(out_dir, name)} is not a file: move it away, or use another --out_dir"
            )
    try:
        os.makedirs(out_dir, exist_ok=True)
        held = lock(out_dir)
        for leftover in ("ckpt.pt.tmp", "best.pt.tmp", "log.jsonl.tmp"):
            if os.path.exists(os.path.join(out_dir, leftover)):
                os.remove(os.path.join(out_dir, leftover))
        restart_log(os.path.join(out_dir, "log.jsonl"), iter_num)
        save_code_diff(out_dir, code)
    except OSError as e:
        raise UserError(f"cannot write to --out_dir={out_dir}: {e.strerror or e}")
    return held


def check_output(path, begins, flag):
    """UserError unless path can take a new output of ours: a new file, or a regular file beginning with
    `begins` (an earlier one of this kind). A checkpoint, a log, a dataset or a device is never replaced."""
    if not path or os.path.isdir(path):
        raise UserError(f"{flag}={path} is {'a directory' if path else 'empty'}: name a file")
    if os.path.lexists(path):
        ours = False
        if os.path.isfile(path):
            with open(path, "rb") as f:
                ours = f.read(len(begins)) == begins
        if not ours:
            raise UserError(f"{flag}={path} exists and is not an earlier output of this kind: it is kept")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the directory of {flag}={path}: {e.strerror}")


def write_atomically(path, text):
    """Temporary file, then rename: a reader never sees half a file, and a failed write leaves the old one."""
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}")
    finally:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")


# ----------------------------------------------------------------------------- the log


def read_log(path):
    """The records of a log.jsonl; a torn last line (a kill in mid-write) is dropped."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path} line {number} is not JSON: the log is damaged")
    return records


def restart_log(path, iter_num):
    """A scratch run (iter_num 0) starts a new log; a resumed one drops what the interrupted run logged after
    its checkpoint (the checkpoint's eval is logged again when the run evaluates at that iteration)."""
    kept = [
        r for r in read_log(path) if r["iter"] < iter_num or (r["iter"] == iter_num and "val_loss" not in r)
    ]
    write_lines(path, kept)


def write_lines(path, records):
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def append_log(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- the code that trained it


def model_hash():
    """The first 12 hex digits of model.py's sha256: its edits change what a checkpoint's weights mean."""
    with open(os.path.join(HERE, "model.py"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def git(*args):
    try:
        done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git here
        return None
    return done.stdout if done.returncode == 0 else None


def code_version():
    """{model_py, and in a git checkout: commit, dirty}, as checkpoints and exports record it."""
    version = {"model_py": model_hash()}
    commit = git("rev-parse", "HEAD")
    if commit:
        version |= {
            "commit": commit.strip(),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    return version


def save_code_diff(out_dir, version):
    """For a dirty tree, model.py's and train.py's changes against the commit, so the run can be redone."""
    path = os.path.join(out_dir, "code.diff")
    if version.get("dirty"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(git("diff", "HEAD", "--", "model.py", "train.py") or "")
    elif os.path.exists(path):
        os.remove(path)


def describe_version(version):
    """'model.py 1a2b3c4d5e6f, git 0123456 (dirty)', or what is known of it."""
    if not version:
        return "an unrecorded version"
    text = f"model.py {version['model_py']}"
    if version.get("commit"):
        text += f", git {version['commit'][:7]}" + (" (dirty)" if version.get("dirty") else "")
    return text


def code_changed(version):
    """A warning when the model.py that wrote a checkpoint (its recorded version) differs from this one, else
    None."""
    now = model_hash()
    if not version or version.get("model_py") == now:
        return None
    return (
        f"it was trained with {describe_version(version)}, but model.py is now {now}: "
        "its weights may not mean the same under this code"
    )


# ----------------------------------------------------------------------------- the plot


def ticks(low, high, count=5):
    """About count round tick values spanning [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    return [i * step for i in range(math.ceil(low / step), math.floor(high / step) + 1)]


def draw(runs, path):
    """One SVG of every run's train loss (nats/token) and val bits per byte against tokens seen, side by side,
    on shared labelled axes. runs: [(label, records)]; written to a temporary file and renamed."""
    panels = [("train loss (nats/token)", "loss"), ("val bits per byte", "val_bpb")]
    width, height, pad, gap, top, bottom = 880, 366 + 14 * math.ceil(len(runs) / 4), 56, 40, 30, 324
    panel_width = (width - 2 * pad - gap) / 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11"><rect width="100%" height="100%" fill="white"/>'
    ]
    for p, (title, key) in enumerate(panels):
        curves = [[(r["tokens"], r[key]) for r in records if r.get(key) is not None] for _, records in runs]
        points = [point for curve in curves for point in curve]
        if not points:
            continue
        x_high = max(x for x, _ in points) or 1
        y_low, y_high = min(y for _, y in points), max(y for _, y in points)
        y_low, y_high = (y_low - 0.05, y_high + 0.05) if y_high == y_low else (y_low, y_high)
        left = pad + p * (panel_width + gap)
        xs = {x: left + panel_width * x / x_high for x in {x for x, _ in points} | set(ticks(0, x_high))}
        ys = {y: bottom - (bottom - top) * (y - y_low) / (y_high - y_low) for y in {y for _, y in points}}
        ys |= {y: bottom - (bottom - top) * (y - y_low) / (y_high - y_low) for y in ticks(y_low, y_high)}
        parts.append(f'<text x="{left}" y="20" font-size="13">{title}</text>')
        parts.append(
            f'<rect x="{left}" y="{top}" width="{panel_width}" height="{bottom - top}" '
            'fill="none" stroke="#999"/>'
        )
        for x in ticks(0, x_high):
            parts.append(f'<text x="{xs[x]:.1f}" y="{bottom + 15}" text-anchor="middle">{x / 1e6:g}M</text>')
        for y in ticks(y_low, y_high):
            parts.append(
                f'<line x1="{left}" x2="{left + panel_width}" y1="{ys[y]:.1f}" y2="{ys[y]:.1f}" '
                'stroke="#eee"/>'
            )
            parts.append(f'<text x="{left - 4}" y="{ys[y] + 4:.1f}" text-anchor="end">{y:.4g}</text>')
        parts.append(
            f'<text x="{left + panel_width / 2}" y="{bottom + 32}" text-anchor="middle">tokens seen</text>'
        )
        for i, ((label, _), curve) in enumerate(zip(runs, curves)):
            if curve:
                line = " ".join(f"{xs[x]:.1f},{ys[y]:.1f}" for x, y in curve)
                color = COLORS[i % len(COLORS)]
                parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}">'
                    f"<title>{html.escape(label)}</title></polyline>"
                )
    for i, (label, _) in enumerate(runs):  # the legend, four runs a row
        x, y = pad + 200 * (i % 4), 372 + 14 * (i // 4)
        parts.append(f'<text x="{x}" y="{y}" fill="{COLORS[i % len(COLORS)]}">{html.escape(label)}</text>')
    write_atomically(path, "".join(parts) + "</svg>\n")
