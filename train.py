"""Train a Llama on the token streams prepare.py wrote.

  python train.py config/train_smoke.py                       # one process: GPU, MPS or CPU
  python train.py --batch_size=32 --compile=False             # any global below, as --key=value
  torchrun --standalone --nproc_per_node=8 train.py config/train_190m.py

Batches come from a generator keyed by (seed, global micro-batch index), so W ranks see exactly the
batches one rank with W times the accumulation sees, and a resumed run replays and skips nothing.
"""
import json
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

import tokenizer
from checkpoint import CheckpointError, clean_state_dict, load_checkpoint, save_checkpoint
from configurator import configure, fail
from model import DTYPES, Llama, ModelConfig, auto_device

# -----------------------------------------------------------------------------
# data and output
out_dir = "out"
data_dir = "data/tinystories"
init_from = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt) or 'hf:PATH' (a local HF Llama directory)
eval_interval = 250
eval_iters = 20  # batches in the fixed validation set
log_interval = 10
wandb_log = False
wandb_project = "tinystories"
# batch: tokens per optimizer step = batch_size * block_size * gradient_accumulation_steps
batch_size = 32  # per micro-step and rank
block_size = 256
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
tie_embeddings = True
attn_backend = "auto"
# optimizer and schedule
learning_rate = 5e-4
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0: off
lr_schedule = "cosine"  # 'cosine' (linear warmup), 'onecycle' (cosine up from lr/25, then down), 'constant'
warmup_iters = 100
lr_decay_iters = 0  # 0: max_iters
min_lr = 5e-5
# system
device = ""  # '' picks cuda, then mps, then cpu
dtype = ""  # '' picks bfloat16 where supported, else float16 (with a GradScaler) on CUDA, else float32
compile = torch.cuda.is_available()  # torch.compile: on by default on CUDA only
seed = 1337
# -----------------------------------------------------------------------------
config = configure(globals())
# -----------------------------------------------------------------------------


# distributed setup: torchrun sets RANK; nccl on CUDA, gloo on CPU so it also runs on a laptop
ddp = "RANK" in os.environ
rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
master = rank == 0
if not device:
    device = auto_device()
if ddp and device.startswith("cuda"):
    device = f"cuda:{local_rank}"
    torch.cuda.set_device(device)
device_type = device.split(":")[0]
if not dtype:
    dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
if dtype not in DTYPES:
    fail(f"--dtype={dtype}: use float32, bfloat16 or float16")
if gradient_accumulation_steps % world_size:
    fail(f"gradient_accumulation_steps={gradient_accumulation_steps} must be divisible by the {world_size} ranks")
if batch_size < 1 or gradient_accumulation_steps < 1:
    fail(f"batch_size={batch_size} and gradient_accumulation_steps={gradient_accumulation_steps} must be at least 1")
if lr_schedule not in ("cosine", "onecycle", "constant"):
    fail(f"--lr_schedule={lr_schedule}: use cosine, onecycle or constant")
if ddp:
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
accumulation = gradient_accumulation_steps // world_size
tokens_per_iter = batch_size * block_size * gradient_accumulation_steps
lr_decay_iters = lr_decay_iters or max_iters
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=DTYPES[dtype])

# data: prepare.py's meta.json and uint16 token streams
for name in ("meta.json", "train.bin", "val.bin"):
    if not os.path.isfile(os.path.join(data_dir, name)):
        fail(f"data_dir '{data_dir}' has no {name}: run prepare.py first (python prepare.py --out_dir={data_dir})")
meta = json.load(open(os.path.join(data_dir, "meta.json")))
split_tokens = {s: os.path.getsize(os.path.join(data_dir, f"{s}.bin")) // 2 for s in ("train", "val")}
for split, n in split_tokens.items():
    if n <= block_size:
        fail(f"block_size={block_size} is larger than {split}.bin in {data_dir} ({n} tokens): "
             "use a smaller --block_size or more data")
bytes_per_token = meta["val"]["bytes"] / meta["val"]["tokens"]


def read_windows(split, starts):
    """Inputs and next-token targets for windows at the given offsets, on the device."""
    # a fresh memmap per batch: a long-lived one grows the process's memory (nanoGPT's finding)
    data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    rows = np.stack([data[i:i + block_size + 1] for i in starts]).astype(np.int64)
    x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
    if device_type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def train_batch(micro_index):
    """The batch of global micro-batch `micro_index`: the same on any number of ranks, and on resume."""
    rng = np.random.default_rng([seed, micro_index])
    return read_windows("train", rng.integers(0, split_tokens["train"] - block_size, size=batch_size))


# the fixed validation set: eval_iters * batch_size evenly spaced windows, shared out over the ranks
val_starts = np.linspace(0, split_tokens["val"] - block_size - 1, eval_iters * batch_size).astype(np.int64)


@torch.no_grad()
def evaluate(model):
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)  # sum of window losses, windows
    mine = val_starts[rank::world_size]
    for i in range(0, len(mine), batch_size):
        x, y = read_windows("val", mine[i:i + batch_size])
        with autocast:
            _, loss = model(x, y)
        total += torch.stack([loss.double() * len(x), torch.tensor(len(x), device=device, dtype=torch.float64)])
    if ddp:
        dist.all_reduce(total)
    model.train()
    val_loss = (total[0] / total[1]).item()
    return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_bpb": val_loss / math.log(2) / bytes_per_token}


def get_lr(it):
    if lr_schedule == "onecycle":  # cosine up from lr/25 over warmup_iters, then cosine down to min_lr
        if it < warmup_iters:
            return learning_rate / 25 + (learning_rate - learning_rate / 25) * (1 - math.cos(math.pi * it / warmup_iters)) / 2
    elif it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if lr_schedule == "constant":
        return learning_rate
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + (learning_rate - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))




def check_vocabulary(source, spec, vocab_size):
    if spec != meta["tokenizer"] or vocab_size != meta["vocab_size"]:
        fail(f"vocabulary mismatch: {source} uses a {vocab_size}-id {spec['kind']} tokenizer, but {data_dir} holds "
             f"{meta['vocab_size']}-id {meta['tokenizer']['kind']} tokens; prepare the data with the same tokenizer")


# model and optimizer: from scratch, from out_dir/ckpt.pt, or from a Hugging Face directory
ckpt_path = os.path.join(out_dir, "ckpt.pt")
iter_num, best_val_loss, checkpoint, init_weights = 0, float("inf"), None, None
if init_from == "resume":
    try:
        checkpoint = load_checkpoint(ckpt_path, map_location=device)
    except CheckpointError as e:
        fail(str(e))
    check_vocabulary(ckpt_path, checkpoint["tokenizer"], checkpoint["model_args"]["vocab_size"])
    model_config = ModelConfig(**checkpoint["model_args"])
    iter_num, best_val_loss, init_weights = checkpoint["iter_num"], checkpoint["best_val_loss"], checkpoint["model"]
elif init_from.startswith("hf:"):
    from export import HFError, load_hf
    try:
        hf_model, hf_tokenizer = load_hf(init_from[3:])
    except (HFError, tokenizer.TokenizerError) as e:
        fail(str(e))
    check_vocabulary(init_from[3:], hf_tokenizer, hf_model.config.vocab_size)
    model_config, init_weights = hf_model.config, hf_model.state_dict()
    model_config.dropout, model_config.attn_backend = dropout, attn_backend
    del hf_model
elif init_from == "scratch":
    model_config = ModelConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                               vocab_size=meta["vocab_size"], hidden_dim=hidden_dim, multiple_of=multiple_of,
                               rope_theta=rope_theta, max_seq_len=max_seq_len or block_size, dropout=dropout,
                               tie_embeddings=tie_embeddings, attn_backend=attn_backend)
else:
    fail(f"--init_from={init_from}: use scratch, resume or hf:PATH")
if block_size > model_config.max_seq_len:
    fail(f"block_size={block_size} is larger than the model's context max_seq_len={model_config.max_seq_len}")
torch.manual_seed(seed)  # the same initial weights on every rank
raw_model = Llama(model_config).to(device)
optimizer = raw_model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
if init_weights is not None:
    raw_model.load_state_dict(clean_state_dict(init_weights))
    del init_weights
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"][rank] if rank < len(checkpoint["rng"]) else None
    if rng is not None:
        torch.set_rng_state(rng["torch"].cpu())
        if device_type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    del checkpoint
else:
    torch.manual_seed(seed + rank)  # dropout masks differ between ranks
compiled = torch.compile(raw_model) if compile else raw_model
model = DDP(compiled, device_ids=[local_rank] if device_type == "cuda" else None) if ddp else compiled


def rng_states():
    """Every rank's RNG state (dropout), so a resumed run continues each rank's stream exactly."""
    state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device_type == "cuda" else None}
    if not ddp:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def write_checkpoint():
    states = rng_states()  # a collective: every rank takes part
    if master:
        save_checkpoint({"model_args": asdict(model_config), "model": raw_model.state_dict(),
                         "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "iter_num": iter_num,
                         "best_val_loss": best_val_loss, "config": config, "tokenizer": meta["tokenizer"],
                         "rng": states}, ckpt_path)


def log(record):
    if master:
        with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if wandb_log:
            wandb.log(record, step=record["iter"])


def plot_losses():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    records = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("val_loss", "val")):
        points = [(r["iter"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), label=label)
    ax.set(xlabel="iteration", ylabel="loss (nats/token)", yscale="log")
    ax.legend()
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=100)
    plt.close(fig)


# SIGTERM / SIGINT: finish the current step, save, exit 0 (preemptible clusters)
stop_signal = False


def request_stop(signum, frame):
    global stop_signal
    stop_signal = True


signal.signal(signal.SIGTERM, request_stop)
signal.signal(signal.SIGINT, request_stop)

if master:
    os.makedirs(out_dir, exist_ok=True)
    if wandb_log:
        import wandb
        wandb.init(project=wandb_project, config=config)
    print(f"{raw_model.num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens per iteration "
          f"({world_size} ranks x {accumulation} micro-steps x {batch_size} x {block_size}), "
          f"{device} {dtype}, compile={compile}" + (f", resuming at iteration {iter_num}" if iter_num else ""))

t0, timed_iters = time.perf_counter(), 0  # for ms/iter, leaving out evals and checkpoints
while True:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if iter_num % eval_interval == 0 or iter_num >= max_iters:
        metrics = evaluate(compiled)
        best_val_loss = min(best_val_loss, metrics["val_loss"])
        if master:
            print(f"iter {iter_num}: val loss {metrics['val_loss']:.4f}, ppl {metrics['val_ppl']:.2f}, "
                  f"bpb {metrics['val_bpb']:.4f}")
        log({"iter": iter_num, **metrics})
        write_checkpoint()
        if master:
            plot_losses()
        t0, timed_iters = time.perf_counter(), 0
    if iter_num >= max_iters:
        break
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(accumulation):
        x, y = train_batch(iter_num * gradient_accumulation_steps + rank * accumulation + micro_step)
        sync = nullcontext() if not ddp or micro_step == accumulation - 1 else model.no_sync()
        with sync:
            with autocast:
                _, loss = model(x, y)
            scaler.scale(loss / accumulation).backward()
        loss_sum += loss.detach()
    # one small all-reduce per step: every rank agrees on stopping and on a non-finite loss
    flags = torch.tensor([float(stop_signal), float(not torch.isfinite(loss_sum))], device=device)
    if ddp:
        dist.all_reduce(flags)
    if flags[1] > 0:
        if master:
            print(f"error: the loss became non-finite at iteration {iter_num}; stopping, and keeping the last good "
                  f"checkpoint {ckpt_path}. Try a lower --learning_rate, --grad_clip, or bfloat16/float32",
                  file=sys.stderr)
        sys.exit(1)
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    timed_iters += 1
    if iter_num % log_interval == 0 or flags[0] > 0:
        loss_value = loss_sum.item() / accumulation
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / timed_iters
        tok_per_s = tokens_per_iter / dt
        mfu = raw_model.estimate_mfu(block_size, tok_per_s / world_size, device)
        if master:
            print(f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms, "
                  f"{tok_per_s:,.0f} tok/s" + (f", mfu {mfu:.1%}" if mfu is not None else ""))
        log({"iter": iter_num, "loss": loss_value, "lr": lr, "ms": dt * 1000, "tok_per_s": tok_per_s, "mfu": mfu})
        t0, timed_iters = time.perf_counter(), 0
    if flags[0] > 0:
        write_checkpoint()
        if master:
            print(f"stopped by signal after iteration {iter_num}; saved {ckpt_path}. "
                  "Continue with --init_from=resume")
        break

if ddp:
    dist.destroy_process_group()
