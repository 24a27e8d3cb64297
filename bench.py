"""Benchmarks that print figures (no pass/fail): python bench.py --what=prepare|decode [--compile=True]

prepare: prepare.py as a whole process on `stories` repeated to about `prepare_mb` MB, beside the ceiling
         (a process that only reads the file, splits the stories over all cores and encodes them).
decode:  CPU generation of llama2.c's 15M shape with the KV cache, with full recompute, and the
         bandwidth floor (weight bytes over one large matrix-vector product's bandwidth).
"""
import os
import subprocess
import sys
import tempfile
import time

from configurator import configure

what = "prepare"
stories = "../shared/tinystories/stories_2500.txt"
prepare_mb = 200
compile = False  # decode: also time the decode step under torch.compile (about 25 s of compiling on 2 cores)
# recipe: every recipe's lr sweep at equal tokens on `stories`, its first recipe_train_stories for training
recipes = "adamw,muon,muon_wsd,default"  # which of RECIPES to run, comma-separated; the first sets the target
recipe_lrs = ""  # replaces sweeps, e.g. "adamw=5e-3;default=1e-2,2e-2"
recipe_train_stories = 2000  # the rest of `stories` are the held-out val split
recipe_shape = "--dim=64 --n_layers=4 --n_heads=4"
recipe_block = 128  # context; a batch is 16 windows
recipe_iters = 200
recipe_args = ""  # more train.py arguments for every run, e.g. "--muon_momentum_warmup=0" to measure one option
recipe_fractions = "0.25,0.3"  # the last recipe retries the first one's final bpb in runs this much shorter
recipe_jobs = 2  # runs at once, each on cores / recipe_jobs threads (OMP_NUM_THREADS, if set, wins)
recipe_out = "out/bench_recipe"  # runs and the prepared data are kept here
configure(globals())
HERE = os.path.dirname(os.path.abspath(__file__))

CEILING = """
import sys
from multiprocessing import Pool
sys.path.insert(0, sys.argv[2])
import tokenizer
def init():
    global enc
    enc = tokenizer.gpt2_encoding()
def work(stories):
    return sum(len(enc.encode_ordinary(s)) for s in stories)
if __name__ == "__main__":
    stories = open(sys.argv[1], encoding="utf-8").read().split(tokenizer.EOT)
    n = len(stories) // 64 + 1
    with Pool(initializer=init) as pool:
        print(sum(pool.imap(work, [stories[i:i + n] for i in range(0, len(stories), n)])))
"""


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE)
    return time.perf_counter() - start


def bench_prepare():
    if not os.path.isfile(stories):
        sys.exit(f"error: {stories} not found: pass --stories=PATH to a TinyStories .txt file")
    with tempfile.TemporaryDirectory() as tmp:
        text = open(stories, encoding="utf-8").read()
        big = os.path.join(tmp, "big.txt")
        with open(big, "w", encoding="utf-8") as f:
            for _ in range(max(1, round(prepare_mb * 1e6 / len(text.encode())))):
                f.write(text)
        mb = os.path.getsize(big) / 1e6
        print(f"input: {mb:.0f} MB ({stories} repeated), {os.cpu_count()} cores")
        ceiling = timed([sys.executable, "-c", CEILING, big, HERE])
        prep = timed([sys.executable, "prepare.py", f"--input={big}", f"--out_dir={tmp}/out"])
        print(f"{'way of encoding':<48} {'seconds':>8} {'MB/s':>8}")
        print(f"{'ceiling: read, split, Pool.map encode_ordinary':<48} {ceiling:8.2f} {mb / ceiling:8.1f}")
        print(f"{'python prepare.py (gpt2, writes train/val.bin)':<48} {prep:8.2f} {mb / prep:8.1f}")
        print(f"prepare.py reaches {ceiling / prep:.0%} of the ceiling")


def bench_decode():
    import torch
    from model import Llama, ModelConfig
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=288, n_layers=6, n_heads=6, vocab_size=32000, tie_embeddings=True,
                              max_seq_len=512)).eval()
    prompt = torch.randint(0, 32000, (1, 16))
    new_tokens = 256

    def tokens_per_s(**kwargs):  # the best of 3 runs: this machine's timings are noisy
        model.generate(prompt, 16, **kwargs)  # warm-up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            model.generate(prompt, new_tokens, **kwargs)
            best = min(best, time.perf_counter() - start)
        return new_tokens / best

    cached, recompute = tokens_per_s(use_cache=True), tokens_per_s(use_cache=False)
    if compile:
        model.forward = torch.compile(model.forward, dynamic=True)
        compiled = tokens_per_s(use_cache=True)
    # the floor: every weight read once per token, at the bandwidth of one large matrix-vector product
    matrix, vector = torch.randn(8192, 8192), torch.randn(8192)
    for _ in range(3):
        matrix @ vector
    seconds = []
    for _ in range(20):
        start = time.perf_counter()
        matrix @ vector
        seconds.append(time.perf_counter() - start)
    bandwidth = matrix.numel() * 4 / min(seconds)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    floor = weight_bytes / bandwidth
    print(f"llama2.c 15M shape ({model.num_params() / 1e6:.1f}M params, fp32), batch 1, 16-token prompt, "
          f"{new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"{'what':<40} {'ms/token':>9} {'tokens/s':>9}")
    print(f"{'KV cache (prefill + decode steps)':<40} {1e3 / cached:9.2f} {cached:9.0f}")
    if compile:
        print(f"{'KV cache, torch.compile':<40} {1e3 / compiled:9.2f} {compiled:9.0f}")
    print(f"{'full recompute every step (nanoGPT)':<40} {1e3 / recompute:9.2f} {recompute:9.0f}")
    print(f"{'floor: %.0f MB of weights at %.1f GB/s' % (weight_bytes / 1e6, bandwidth / 1e9):<40} "
          f"{1e3 * floor:9.2f} {1 / floor:9.0f}")
    print(f"KV cache: {cached / recompute:.1f}x recompute, {cached * floor:.0%} of the floor's speed")


# name: (train.py arguments, learning rates swept); every run adds the setting's shape, batch and schedule length
RECIPES = {
    "adamw": (["config/train_baseline_adamw.py"], [2e-3, 5e-3, 1e-2]),  # the recipe before this one, lr tuned
    "muon": (["--optimizer=muon", "--lr_schedule=cosine", "--tie_embeddings=True", "--embedding_lr_scale=1"],
             [5e-3, 1e-2, 2e-2]),  # Muon alone
    "muon_wsd": (["--tie_embeddings=True", "--embedding_lr_scale=1"], [5e-3, 1e-2, 2e-2, 4e-2]),  # and WSD
    "default": ([], [5e-3, 1e-2, 2e-2, 4e-2]),  # train.py's: and untied, embedding lr x5, momentum warmup
}


def recipe_data():
    """prepare.py's 4096-id BPE on the first recipe_train_stories stories, val on the rest (cached)."""
    data = os.path.join(recipe_out, f"data_{recipe_train_stories}")
    if os.path.isfile(os.path.join(data, "meta.json")):
        return data
    import tokenizer
    texts = [t.strip() for t in open(stories, encoding="utf-8").read().split(tokenizer.EOT) if t.strip()]
    os.makedirs(recipe_out, exist_ok=True)
    for name, part in (("train", texts[:recipe_train_stories]), ("val", texts[recipe_train_stories:])):
        with open(os.path.join(recipe_out, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.writelines(t + f"\n{tokenizer.EOT}\n" for t in part)
    subprocess.run([sys.executable, "prepare.py", f"--input={recipe_out}/train.txt", f"--val_input={recipe_out}/val.txt",
                    "--vocab_size=4096", f"--out_dir={data}"], check=True, cwd=HERE)
    return data


def recipe_run(data, name, lr, iters):
    """One training run: final val bpb, the (tokens, bpb) curve, and seconds of training (evals left out).
    A finished run is read back from its out_dir rather than run again."""
    import hashlib
    import json
    extra = recipe_shape.split() + [f"--block_size={recipe_block}"] + recipe_args.split()
    out = os.path.join(recipe_out, f"{name}_lr{lr:g}_it{iters}_{hashlib.md5(' '.join(extra).encode()).hexdigest()[:6]}")
    every = max(1, iters // 6)
    if os.path.isfile(os.path.join(HERE, out, "result.json")):
        return json.load(open(os.path.join(HERE, out, "result.json")))
    cmd = [sys.executable, "train.py", *RECIPES[name][0], f"--data_dir={data}", f"--out_dir={out}", "--overwrite=True",
           "--batch_size=16", "--gradient_accumulation_steps=1", f"--max_iters={iters}",
           f"--eval_interval={every}", f"--log_interval={every}", "--eval_iters=10", "--warmup_iters=30",
           "--min_lr=0.0", f"--learning_rate={lr}", "--compile=False", "--device=cpu", *extra]
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // recipe_jobs)), **os.environ}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=HERE, env=env)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in open(os.path.join(HERE, out, "log.jsonl"))]
    curve = [(r["iter"] * 16 * recipe_block, r["val_bpb"]) for r in log if "val_bpb" in r]
    seconds = sum(r["ms"] for r in log if "ms" in r) * every / 1000
    result = {"bpb": curve[-1][1], "curve": curve, "seconds": seconds, "wall": wall}
    json.dump(result, open(os.path.join(HERE, out, "result.json"), "w"))
    return result


def reached(run, target):
    """Tokens and training seconds at which the run's val curve first reaches target (interpolated), or None."""
    for (t0, b0), (t1, b1) in zip(run["curve"], run["curve"][1:]):
        if b1 <= target:
            tokens = t0 + (t1 - t0) * (b0 - target) / (b0 - b1)
            return tokens, run["seconds"] * tokens / run["curve"][-1][0]
    return None


def bench_recipe():
    from concurrent.futures import ThreadPoolExecutor
    data = recipe_data()
    pool = ThreadPoolExecutor(recipe_jobs)
    lrs = {k: [float(x) for x in v.split(",")] for k, v in (p.split("=") for p in recipe_lrs.split(";") if p)}
    names = recipes.split(",")
    tokens = recipe_iters * 16 * recipe_block
    print(f"setting: {recipe_shape} {recipe_args}, context {recipe_block}, batch 16, {recipe_iters} iterations "
          f"({tokens / 1e6:.2f}M tokens), warmup 30, min_lr 0; train: first {recipe_train_stories} stories of "
          f"{stories}, val: the rest; {os.cpu_count()} cores, {recipe_jobs} runs at once")
    # train s leaves out evals; seconds compare only between runs that ran side by side
    print(f"{'recipe':<9} {'lr':>8} {'val bpb':>8} {'train s':>8} {'wall s':>7}", flush=True)
    sweep = [(name, lr) for name in names for lr in lrs.get(name, RECIPES[name][1])]
    best = {}
    for (name, lr), run in zip(sweep, pool.map(lambda job: recipe_run(data, *job, recipe_iters), sweep)):
        print(f"{name:<9} {lr:8.0e} {run['bpb']:8.4f} {run['seconds']:8.1f} {run['wall']:7.1f}", flush=True)
        if name not in best or run["bpb"] < best[name][1]["bpb"]:
            best[name] = (lr, run)
    target = best[names[0]][1]["bpb"]
    print(f"\nat each recipe's best lr; target: {names[0]}'s final bpb {target:.4f}")
    print(f"{'recipe':<9} {'lr':>8} {'val bpb':>8} {'vs ' + names[0]:>9} {'tokens to target':>17} {'s to target':>12}")
    for name, (lr, run) in best.items():
        hit = reached(run, target)
        to_target = f"{hit[0] / 1e6:6.2f}M ({hit[0] / tokens:.2f}x) {hit[1]:12.1f}" if hit else f"{'not reached':>17} {'':>12}"
        print(f"{name:<9} {lr:8.0e} {run['bpb']:8.4f} {run['bpb'] / target - 1:+9.1%} {to_target}")
    # a WSD run is far from its best before its decay: shorter runs with their own schedule say more
    last, (lr, _) = names[-1], best[names[-1]]
    print(f"\n{last} at lr {lr:g} with shorter schedules (its own decay at the end of each)")
    print(f"{'tokens':>14} {'val bpb':>8} {'reaches target':>15} {'train s':>8}")
    fractions = [float(f) for f in recipe_fractions.split(",") if f]
    for fraction, run in zip(fractions, pool.map(lambda f: recipe_run(data, last, lr, round(recipe_iters * f)), fractions)):
        print(f"{run['curve'][-1][0] / 1e6:6.2f}M ({fraction:.2f}x) {run['bpb']:8.4f} {str(run['bpb'] <= target):>15} "
              f"{run['seconds']:8.1f}", flush=True)


if __name__ == "__main__":
    {"prepare": bench_prepare, "decode": bench_decode, "recipe": bench_recipe}[what]()
