"""Train a Llama on the token streams prepare.py wrote.

  python train.py config/train_smoke.py                       # one process: GPU, MPS or CPU
  python train.py --batch_size=32 --compile=False             # any global below, as --key=value
  torchrun --standalone --nproc_per_node=8 train.py config/train_190m.py

Batches come from a generator keyed by (seed, global micro-batch index), so W ranks see exactly the batches
one rank with W times the accumulation sees, and a resumed run replays and skips nothing. out_dir/ckpt.pt is
the latest full state (for --init_from=resume); out_dir/best.pt the lowest val loss.
"""

import gc
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import runs
from checkpoint import load_for_resume, model_from_checkpoint, save_checkpoint
from configurator import configure, fail
from data import TrainingData
from device import DTYPES, choose, peak_flops, total_memory
from fastdecode import compiler_cache_writable
from hf import load_hf
from model import BackendError, Llama, ModelConfig, pick_attention_backend

# -----------------------------------------------------------------------------
# data and output
out_dir = "out"
data_dir = "data/tinystories"
init_from = "scratch"  # 'scratch', 'resume' (out_dir/ckpt.pt), 'auto' (resume if it exists) or 'hf:PATH'
overwrite = False  # True: a scratch run may replace the checkpoint already in out_dir
allow_code_change = False  # True: resume although model.py changed since the checkpoint was written
eval_interval = 250
eval_iters = 20  # batches in the fixed validation set
log_interval = 10  # also how often the ranks agree on stopping: the only host syncs between evals
wandb_log = False
wandb_project = "tinystories"
# batch: tokens per optimizer step = batch_size * block_size * gradient_accumulation_steps
batch_size = 32  # per micro-step and rank
block_size = 256
story_aligned = False  # windows start at a story's <|endoftext|> (as eval.py reads stories), not at any token
gradient_accumulation_steps = 4  # in total over all ranks; each rank does this / world size
# model
dim = 288
n_layers = 6
n_heads = 6
n_kv_heads = 0  # 0: n_heads
hidden_dim = 0  # 0: the Llama rule from dim and multiple_of
multiple_of = 32
max_seq_len = 0  # the model's context; 0: block_size
rope_theta = 10000.0
dropout = 0.0
tie_embeddings = False  # untied: the embedding can take embedding_lr_scale's higher lr without the head
zero_init = False  # o_proj and down_proj start at zero, so that each block starts as the identity
attn_backend = "auto"  # auto, fa4, fa2, sdpa or math
# optimizer and schedule: the defaults are the recipe bench.py --what=recipe measured best in both regimes;
# the source-named presets in config/ set their source's recipe, config/train_baseline_adamw.py llama2.c's
optimizer = "muon"  # 'muon' (torch.optim.Muon for the blocks' matrices, AdamW for the rest) or 'adamw'
learning_rate = 1e-2
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0: off
embedding_lr_scale = 5.0  # the token embedding's lr is learning_rate times this (AdamW)
muon_momentum = 0.95
muon_momentum_warmup = 100  # muon: iterations over which momentum rises linearly from 0.85 to muon_momentum
lr_schedule = "wsd"  # 'wsd' (warmup, stable, linear decay), 'cosine' or 'onecycle'
warmup_iters = 100
lr_decay_iters = 0  # cosine: iterations until min_lr; 0: max_iters
decay_fraction = 0.4  # wsd: the last fraction of max_iters decays linearly to min_lr (0: a constant lr)
# many passes over a few stories overfit: from 2 planned passes over a train.bin of fewer tokens than the
# model has parameters on, weight decay and dropout rise to at least these (0 and 0: off)
many_pass_weight_decay = 0.3
many_pass_dropout = 0.1
min_lr = 0.0
# system
device = ""  # '' picks cuda, then mps, then cpu
dtype = ""  # '' picks bfloat16 where supported, else float16 (with a GradScaler) on CUDA, else float32
compile = torch.cuda.is_available()  # torch.compile: on by default on CUDA only
seed = 1337
# -----------------------------------------------------------------------------
SHAPE = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "multiple_of", "max_seq_len", "rope_theta")
SHAPE += ("tie_embeddings",)
shape_defaults = {key: globals()[key] for key in SHAPE}
positive = ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval")
positive += ("block_size", "dim", "n_layers", "n_heads", "multiple_of")
checks = dict.fromkeys(positive, "[1, inf)")
checks |= dict.fromkeys(("max_iters", "warmup_iters", "lr_decay_iters", "muon_momentum_warmup"), "[0, inf)")
non_negative = ("n_kv_heads", "hidden_dim", "max_seq_len", "min_lr", "weight_decay", "many_pass_weight_decay")
checks |= dict.fromkeys(non_negative + ("grad_clip",), "[0, inf)")
checks |= dict.fromkeys(("learning_rate", "embedding_lr_scale"), "(0, inf)")
checks |= dict.fromkeys(("beta1", "beta2", "muon_momentum", "dropout", "many_pass_dropout"), "[0, 1)")
checks |= {"decay_fraction": "[0, 1]", "seed": "[0, 2**63)", "rope_theta": "(1, inf)"}
checks |= {"optimizer": ("muon", "adamw"), "lr_schedule": ("wsd", "cosine", "onecycle")}
checks |= {"attn_backend": ("auto", "fa4", "fa2", "sdpa", "math")}
config = configure(globals(), checks=checks)
# -----------------------------------------------------------------------------

# distributed setup: torchrun sets RANK; nccl on CUDA, gloo on CPU so it also runs on a laptop
ddp = "RANK" in os.environ
rank, local_rank, world_size = (int(os.environ.get(k, 0)) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
world_size, master = max(1, world_size), rank == 0
device, dtype = choose(device, dtype)
if ddp and device.startswith("cuda"):
    device = f"cuda:{local_rank}"
    torch.cuda.set_device(device)
device_type = device.split(":")[0]
if init_from not in ("scratch", "resume", "auto") and not init_from.startswith("hf:"):
    fail(f"--init_from={init_from}: use scratch, resume, auto or hf:PATH")
if gradient_accumulation_steps < world_size:  # a 1-step preset under torchrun: one micro-step per rank
    if master:
        print(f"note: using {world_size} micro-steps, one per rank", file=sys.stderr)
    gradient_accumulation_steps = config["gradient_accumulation_steps"] = world_size
if gradient_accumulation_steps % world_size:
    fail(f"--gradient_accumulation_steps={gradient_accumulation_steps} must divide by the {world_size} ranks")
if wandb_log:
    try:
        import wandb
    except ImportError:
        fail("--wandb_log=True needs the wandb package: pip install wandb (or leave --wandb_log off)")
if compile and not compiler_cache_writable():
    print("warning: torch.compile's cache is not writable: training eagerly", file=sys.stderr)
    compile = config["compile"] = False
accumulation = gradient_accumulation_steps // world_size
tokens_per_iter = batch_size * block_size * gradient_accumulation_steps
lr_decay_iters = lr_decay_iters or max_iters
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=DTYPES[dtype])
data = TrainingData(data_dir, block_size, device)  # checked before anything is written

# the out_dir: no run replaced by mistake
ckpt_path, best_path, log_path = (os.path.join(out_dir, name) for name in ("ckpt.pt", "best.pt", "log.jsonl"))
if init_from == "auto":
    init_from = "resume" if os.path.isfile(ckpt_path) else "scratch"
if init_from != "resume" and os.path.isfile(ckpt_path) and not overwrite:
    fail(
        f"{out_dir} already holds a checkpoint; continue it with --init_from=resume, train into another "
        "--out_dir, or replace it with --overwrite=True"
    )
if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    fail(f"--out_dir={out_dir} is a file: give a directory")

# model: from scratch, from out_dir/ckpt.pt, or from a Hugging Face directory
iter_num, best_val_loss, elapsed_before, checkpoint = 0, float("inf"), 0.0, None
code = runs.code_version()
torch.manual_seed(seed)  # the same initial weights on every rank
if init_from == "resume":
    given = {key: config[key] for key in SHAPE if config[key] != shape_defaults[key]}  # set by the user
    checkpoint = load_for_resume(ckpt_path, device, given, allow_code_change, warn=master)
    data.check_vocabulary(ckpt_path, checkpoint["tokenizer"], checkpoint["model_args"]["vocab_size"])
    raw_model = model_from_checkpoint(checkpoint, dropout=dropout, attn_backend=attn_backend)
    iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    elapsed_before = checkpoint.get("elapsed", 0.0)
elif init_from.startswith("hf:"):
    hf_model, hf_tokenizer = load_hf(init_from[3:], flag="--init_from=hf:")
    data.check_vocabulary(init_from[3:], hf_tokenizer, hf_model.config.vocab_size)
    weights = {"model_args": asdict(hf_model.config), "model": hf_model.state_dict()}
    raw_model = model_from_checkpoint(weights, dropout=dropout, attn_backend=attn_backend)
else:
    shape = {key: config[key] for key in SHAPE} | {"max_seq_len": max_seq_len or block_size}
    try:
        shape |= dict(vocab_size=data.meta["vocab_size"], dropout=dropout, attn_backend=attn_backend)
        raw_model = Llama(ModelConfig(**shape))
    except ValueError as e:  # a shape the model cannot take
        fail(str(e))
    for name, p in raw_model.named_parameters() if zero_init else []:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            torch.nn.init.zeros_(p)
passes = max_iters * tokens_per_iter / data.tokens["train"]
if passes >= 2 and data.tokens["train"] < raw_model.num_params():  # it could learn the stories by heart
    weight_decay = config["weight_decay"] = max(weight_decay, many_pass_weight_decay)
    dropout = config["dropout"] = raw_model.config.dropout = max(dropout, many_pass_dropout)
    for module in raw_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
    if master:
        print(f"note: {passes:.1f} passes over the data: weight_decay {weight_decay}, dropout {dropout}")
model_config = raw_model.config
if block_size > model_config.max_seq_len:
    fail(f"block_size={block_size} is larger than the model's context max_seq_len={model_config.max_seq_len}")
# what a micro-batch's activations take for the backward, about: 10 numbers per token, layer and dim, and 4
# per hidden unit. Refused when that alone is more than the device has, rather than dying in the allocator.
need = batch_size * block_size * model_config.n_layers * (10 * model_config.dim + 4 * model_config.hidden_dim)
need *= DTYPES[dtype].itemsize
if need > (total_memory(device) or float("inf")):
    fail(
        f"--batch_size={batch_size} of {block_size} tokens needs about {need / 2**30:,.0f} GiB of "
        "activations, more than this device has: use a smaller --batch_size and a larger "
        "--gradient_accumulation_steps (the tokens per step stay the same)"
    )
if eval_iters * batch_size > data.tokens["val"]:
    fail(
        f"--eval_iters={eval_iters} x --batch_size={batch_size} windows are more than val.bin's "
        f"{data.tokens['val']:,} tokens: use a smaller --eval_iters"
    )
raw_model.to(device)
try:  # chosen and logged once, here: the compiled graph then holds the chosen kernel
    pick_attention_backend(model_config, device, DTYPES[dtype])
except BackendError as e:
    fail(str(e))


def make_optimizers(model):
    """AdamW (weight decay on matrices only), or Muon for the blocks' matrices and AdamW for the rest. Each
    group's lr is the schedule's lr times the group's lr_scale."""
    matrices = [p for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("layers.")]
    embedding = model.embed_tokens.weight
    others = [p for p in model.parameters() if p is not embedding and all(p is not m for m in matrices)]
    others = [p for p in model.parameters() if p is not embedding] if optimizer == "adamw" else others
    adamw_groups = [
        {"params": [embedding], "weight_decay": weight_decay, "lr_scale": embedding_lr_scale},
        {"params": [p for p in others if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": [p for p in others if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    adamw = torch.optim.AdamW(
        adamw_groups, lr=learning_rate, betas=(beta1, beta2), fused=device_type == "cuda"
    )
    if optimizer == "adamw":
        return [adamw]
    muon = torch.optim.Muon(
        [{"params": matrices, "lr_scale": 1.0}],
        lr=learning_rate,
        momentum=muon_momentum,
        weight_decay=weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    return [adamw, muon]


def get_lr(it):
    if lr_schedule == "onecycle" and it < warmup_iters:  # cosine up from lr/25, then cosine down to min_lr
        return learning_rate / 25 + learning_rate * 24 / 25 * (1 - math.cos(math.pi * it / warmup_iters)) / 2
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if lr_schedule == "wsd":  # stable at learning_rate, then a linear decay over the last decay_fraction
        decay_start = max_iters * (1 - decay_fraction)
        progress = max(0.0, it - decay_start) / max(1.0, max_iters - decay_start)
        return learning_rate + (min_lr - learning_rate) * min(1.0, progress)
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + (learning_rate - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def muon_momentum_at(it):
    """modded-nanogpt's momentum warmup: 0.85 up to muon_momentum over muon_momentum_warmup iterations."""
    if it >= muon_momentum_warmup:
        return muon_momentum
    return 0.85 + (muon_momentum - 0.85) * it / muon_momentum_warmup


optimizers = make_optimizers(raw_model)
scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
if checkpoint is not None:
    try:  # another optimizer, or other parameter groups
        for opt, state in zip(optimizers, checkpoint["optimizer"], strict=True):
            opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        fail(
            f"{ckpt_path}'s optimizer state does not fit this run's optimizer ({e}); resume with its recipe "
            f"(optimizer={checkpoint['config'].get('optimizer')!r}), or start from its weights: export it "
            "(export.py) and use --init_from=hf:DIR"
        )
    scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"][rank] if rank < len(checkpoint["rng"]) else None
    if rng is not None:
        torch.set_rng_state(rng["torch"].cpu())
        if device_type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    del checkpoint
else:
    torch.manual_seed(seed + rank)  # dropout masks differ between ranks
out_dir_lock = runs.prepare(out_dir, iter_num, code) if master else None  # held until the run ends
if ddp:
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
compiled = torch.compile(raw_model) if compile else raw_model
model = DDP(compiled, device_ids=[local_rank] if device_type == "cuda" else None) if ddp else compiled


def train_batch(it, step):
    """This rank's micro-batch `step` of iteration `it`, keyed by its global micro-batch index: the same on
    any number of ranks, and on resume."""
    rng = np.random.default_rng([seed, it * gradient_accumulation_steps + rank * accumulation + step])
    if story_aligned:
        return data.windows("train", data.story_starts[rng.integers(0, len(data.story_starts), batch_size)])
    return data.windows("train", rng.integers(0, data.tokens["train"] - block_size, size=batch_size))


# the fixed validation set: eval_iters * batch_size evenly spaced windows, shared out over the ranks
val_starts = np.linspace(0, data.tokens["val"] - block_size - 1, eval_iters * batch_size).astype(np.int64)


@torch.no_grad()
def evaluate():
    """Mean loss over the fixed validation windows; bits per byte = loss / ln 2 / val.bin's bytes a token."""
    compiled.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)  # sum of window losses, windows
    mine = val_starts[rank::world_size]
    for i in range(0, len(mine), batch_size):
        x, y = data.windows("val", mine[i : i + batch_size])
        with autocast:
            loss = compiled(x, y)
        total += torch.stack([loss.double() * len(x), torch.tensor(float(len(x)), device=device).double()])
    if ddp:
        dist.all_reduce(total)
    compiled.train()
    val_loss = (total[0] / total[1]).item()
    bpb = val_loss / math.log(2) / data.bytes_per_token
    return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_bpb": bpb}


def rng_states():
    """Every rank's RNG state (dropout), so a resumed run continues each rank's stream exactly."""
    state = {"torch": torch.get_rng_state()}
    state["cuda"] = torch.cuda.get_rng_state(device) if device_type == "cuda" else None
    if not ddp:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def write_checkpoint(metrics, improved):
    """best.pt first (weights only), then ckpt.pt: a kill between the two leaves them consistent on resume."""
    states = rng_states()  # a collective: every rank takes part
    if not master:
        return
    common = {"model_args": asdict(model_config), "model": raw_model.state_dict(), "iter_num": iter_num}
    common |= {"tokenizer": data.meta["tokenizer"], "config": config, "code": code, **metrics}
    full = {"optimizer": [opt.state_dict() for opt in optimizers], "scaler": scaler.state_dict()}
    full |= {"best_val_loss": best_val_loss, "rng": states, "elapsed": elapsed()}
    try:
        if improved:
            save_checkpoint(common, best_path)
        save_checkpoint({**common, **full}, ckpt_path)
    except OSError as e:
        fail(f"cannot write a checkpoint to {out_dir}: {e.strerror or e}; the previous checkpoint is kept")


def log(record):
    if master:
        record = {
            "iter": iter_num,
            "tokens": iter_num * tokens_per_iter,
            **record,
            "elapsed": round(elapsed(), 3),
        }
        runs.append_log(log_path, record)
        if wandb_log:
            wandb.log(record, step=iter_num)


def elapsed():
    """Seconds of this run's wall time, a resumed run's earlier time included."""
    return elapsed_before + time.perf_counter() - started


# SIGTERM / SIGINT: finish the current log window, save, exit 0 (preemptible clusters)
stop_signal = False


def request_stop(signum, frame):
    """The first signal asks for a checkpoint at the next log line; a second one stops at once (the last
    checkpoint stays as it was)."""
    global stop_signal
    if stop_signal:
        raise KeyboardInterrupt
    stop_signal = True


signal.signal(signal.SIGTERM, request_stop)
signal.signal(signal.SIGINT, request_stop)

if master:
    if wandb_log:
        wandb.init(project=wandb_project, config=config)
    print(
        f"{raw_model.num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens per iteration "
        f"({world_size} ranks x {accumulation} micro-steps x {batch_size} x {block_size}), {device} {dtype}, "
        f"{optimizer}, compile={compile}" + (f", resuming at iteration {iter_num}" if iter_num else "")
    )

started = t0 = time.perf_counter()  # t0, timed_iters: for ms/iter, leaving out evals and checkpoints
timed_iters = 0
window_loss = torch.zeros((), device=device)  # summed on the device between log lines: no host sync per step
peak = peak_flops(device)

while True:
    if iter_num % eval_interval == 0 or iter_num >= max_iters:
        metrics = evaluate()
        improved = metrics["val_loss"] < best_val_loss
        best_val_loss = min(best_val_loss, metrics["val_loss"])
        if master:
            print(
                f"iter {iter_num}: val loss {metrics['val_loss']:.4f}, ppl {metrics['val_ppl']:.2f}, "
                f"bpb {metrics['val_bpb']:.4f}" + (" (best so far)" if improved else "")
            )
        log(metrics)
        write_checkpoint(metrics, improved)
        if master:
            runs.draw([(out_dir, runs.read_log(log_path))], os.path.join(out_dir, "loss.svg"))
        t0, timed_iters = time.perf_counter(), 0
        window_loss.zero_()
    if iter_num >= max_iters:
        break
    lr = get_lr(iter_num)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
    if optimizer == "muon":
        for group in optimizers[1].param_groups:
            group["momentum"] = muon_momentum_at(iter_num)
    x, y = train_batch(iter_num, 0)
    for micro_step in range(accumulation):
        sync = nullcontext() if not ddp or micro_step == accumulation - 1 else model.no_sync()
        with sync:
            with autocast:
                loss = model(x, y)
            if micro_step + 1 < accumulation:  # the next batch loads while this one computes
                x, y = train_batch(iter_num, micro_step + 1)
            scaler.scale(loss / accumulation).backward()
        window_loss += loss.detach() / accumulation
    if grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    iter_num += 1
    timed_iters += 1
    # every log_interval steps and before each eval (so no checkpoint holds a non-finite model): the ranks
    # agree on a stop signal and on a non-finite loss; these are the only host syncs between evals
    if iter_num % log_interval and iter_num % eval_interval and iter_num < max_iters:
        continue
    flags = torch.stack(
        [torch.tensor(float(stop_signal), device=device), (~torch.isfinite(window_loss)).float()]
    )
    if ddp:
        dist.all_reduce(flags)
    stop, non_finite = (bool(f > 0) for f in flags.tolist())
    if non_finite:
        if master:  # one line, not one per rank
            print(
                f"error: the loss became non-finite by iteration {iter_num}; stopping, and keeping the last "
                f"good checkpoint {ckpt_path}. Try a lower --learning_rate, --grad_clip, or bfloat16/float32",
                file=sys.stderr,
            )
        sys.exit(1)
    if iter_num % log_interval == 0 or stop:
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / timed_iters
        tok_per_s = tokens_per_iter / dt
        mfu = None if peak is None else raw_model.flops_per_token(block_size) * tok_per_s / world_size / peak
        loss_value = window_loss.item() / timed_iters
        if master:
            print(
                f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms, "
                f"{tok_per_s:,.0f} tok/s" + (f", mfu {mfu:.1%}" if mfu is not None else "")
            )
        log({"loss": loss_value, "lr": lr, "ms": dt * 1000, "tok_per_s": tok_per_s, "mfu": mfu})
        t0, timed_iters = time.perf_counter(), 0
        window_loss.zero_()
    if stop:
        write_checkpoint({}, False)
        if master:
            print(
                f"stopped by signal after iteration {iter_num}; saved {ckpt_path}: continue it with "
                "--init_from=resume"
            )
        break

if ddp:
    # DDP's reducer holds the gloo process group: left alive, it is destroyed during interpreter shutdown with
    # its threads still joinable, and std::terminate aborts the rank ("terminate called without an active
    # exception", exit 1 after a good run). Free it, then tear the group down while Python is alive.
    del model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
