"""Benchmarks that print figures (no pass/fail): python bench.py --what=prepare|decode|quantize|train|recipe

prepare: prepare.py as a whole process on `stories` repeated to about `prepare_mb` MB, beside the ceiling
         (a process that only reads the file, splits the stories over all cores and encodes them).
decode:  our sampler (generate.py), eager and with the compiled decode step, at llama2.c's 15M and 42M shapes,
         batch 1, 4 and 16, alternating with llama2.c's run.c (../shared/anchors/llama2c_decode.py) in the same
         minutes; at batch 1 also with --quantize's bf16 and int8 weights. Ends with the line `decode tok/s: N`:
         15M, batch 1, fp32, the compiled step (sample.py's default path once a checkpoint's step is built).
         --decode_device=cuda: the same on a GPU in sample.py's dtype (bf16), the compiled step in CUDA graphs.
quantize: what --quantize costs on a trained checkpoint (--quantize_out_dir): val bpb, greedy agreement with fp32.
train:   a preset's training step (forward, chunked loss, backward, AdamW) on random tokens: ms/iter, tokens/s,
         MFU on GPUs, peak memory, attention backend, compile time; with --llama2c_dir, llama2.c's model.py beside it.
recipe:  every training recipe's lr sweep at equal tokens on held-out stories (see bench_recipe).
"""

import os
import re
import subprocess
import sys
import tempfile
import time

from configurator import configure

what = "prepare"
stories = "../shared/tinystories/stories_2500.txt"
prepare_mb = 200
compile = False  # train: torch.compile the model
threads = 2  # decode: torch threads, and run.c's OpenMP threads
rounds = 3  # decode and train: alternating rounds, for ranges on a noisy machine
decode_shapes = "15M,42M"  # decode: of SHAPES
decode_quantize = (
    "bf16,int8"  # decode: also these --quantize choices at batch 1; quantize: the ones compared with fp32
)
quantize_out_dir = ""  # quantize: the trained checkpoint's directory
quantize_prompts = 16  # quantize: greedy samples, one per story opening
quantize_tokens = 240  # quantize: new tokens per greedy sample
decode_tokens = (
    256  # decode: positions per sample, prompt included (run.c's --steps): a 16-token prompt, 240 new
)
decode_device = (
    "cpu"  # decode: cpu (beside run.c, fp32 and decode_quantize) or cuda (sample.py's dtype, CUDA graphs)
)
preset = "config/train_llama2c_15m.py"  # train: the config file whose shape and batch are timed
train_device = ""  # train: '' picks cuda, then mps, then cpu
train_steps = 5  # train: steps timed per round, after one warm-up step
train_batch_size = 0  # train: replaces the preset's batch_size (0: keep it)
train_vocab_size = 0  # train: the vocabulary (0: 32000, llama2.c's)
llama2c_dir = ""  # train: a checkout of llama2.c, whose model.py is timed beside ours
# recipe: every recipe's lr sweep at equal tokens on `stories`, its first recipe_train_stories for training
recipes = "adamw,muon,muon_wsd,default"  # which of RECIPES to run, comma-separated; the first sets the target
recipe_lrs = ""  # replaces sweeps, e.g. "adamw=5e-3;default=1e-2,2e-2"
recipe_train_stories = 2000  # the rest of `stories` are the held-out val split
recipe_shape = "--dim=64 --n_layers=4 --n_heads=4"
recipe_block = 128  # context; a batch is 16 windows
recipe_iters = 200
recipe_args = (
    ""  # more train.py arguments for every run, e.g. "--muon_momentum_warmup=0" to measure one option
)
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


SHAPES = {
    "15M": dict(dim=288, n_layers=6, n_heads=6, max_seq_len=256),
    "42M": dict(dim=512, n_layers=8, n_heads=8, max_seq_len=1024),
}


def llama2c_decode(shape, tokens):
    """run.c's own "achieved tok/s" (best of 3) at this shape, or None where the anchor is not beside us."""
    anchor = os.path.join(HERE, "..", "shared", "anchors", "llama2c_decode.py")
    if not os.path.isfile(anchor):
        return None
    out = subprocess.run(
        [
            sys.executable,
            anchor,
            f"--dim={shape['dim']}",
            f"--n_layers={shape['n_layers']}",
            f"--n_heads={shape['n_heads']}",
            f"--seq_len={shape['max_seq_len']}",
            f"--steps={tokens}",
            f"--threads={threads}",
        ],
        capture_output=True,
        text=True,
    )
    found = re.search(r"([0-9.]+) tok/s", out.stdout)
    return float(found.group(1)) if found else None


def median(values):
    return sorted(values)[len(values) // 2]


def quantize_choices():
    """fp32 ('') and decode_quantize's choices, each checked as the scripts check --quantize."""
    from generate import check_quantize

    choices = ["", *filter(None, decode_quantize.split(","))]
    for choice in choices:
        try:
            check_quantize(choice, "cpu")
        except ValueError as e:
            sys.exit(f"error: --decode_quantize: {e}")
    return choices


def choose_device(device, flag):
    """device.choose's device and its default dtype (fp32 on CPU, bf16 on GPUs), or one error line."""
    from device import choose

    try:
        return choose(device, "", flag)
    except ValueError as e:
        sys.exit(f"error: {e}")


def bench_decode():
    """Our sampler beside llama2.c's run.c, alternating in the same minutes: greedy, 16-token prompt, fp32 on
    CPU (on a GPU, sample.py's dtype and no run.c).

    Both of sample.py's paths: eager (a checkpoint whose compiled decode step is not built yet) and the
    compiled step (built once per checkpoint and batch size, then loaded: sample.py's default from then on);
    and at batch 1 the same with each --quantize of decode_quantize.
    """
    import torch

    from device import DTYPES
    from generate import compile_for_decoding, prepare_for_decoding, stream
    from model import Llama, ModelConfig

    torch.set_num_threads(threads)
    device, dtype = choose_device(decode_device, "--decode_device")
    on_cpu = device.startswith("cpu")
    print(
        f"{device} ({threads} threads), {dtype}, greedy, {decode_tokens} positions as run.c's --steps: a 16-token "
        f"prompt and {decode_tokens - 16} new tokens, {rounds} rounds (ranges are min-max over rounds); our tok/s "
        "count only the new tokens, over the time from the prompt to the last token"
    )
    if not on_cpu and decode_quantize:
        print(
            f"note: --quantize is for CPUs, so decode_quantize's rows ({decode_quantize}) are left out on {device}"
        )
    headline = None
    for name in decode_shapes.split(","):
        shape = SHAPES[name]
        samplers = []  # (label, model, compiled step or None, batch)
        for quantize in quantize_choices() if on_cpu else [""]:  # --quantize is for CPUs
            torch.manual_seed(0)  # the same weights for every variant
            model = Llama(ModelConfig(vocab_size=32000, tie_embeddings=True, **shape)).to(
                device, DTYPES[dtype]
            )
            model = prepare_for_decoding(model, quantize)
            prefix = f"{quantize} " if quantize else ""
            for batch in (1, 4, 16) if not quantize else (1,):
                samplers.append((f"{prefix}eager, batch {batch}", model, None, batch))
                start = time.perf_counter()
                try:
                    step = compile_for_decoding(model, batch)
                except RuntimeError as e:  # no C++ compiler, say: the eager rows still stand
                    print(f"{name:<6} no compiled decode step: {e}", flush=True)
                    continue
                print(
                    f"{name:<6} {prefix}compiled decode step, batch {batch}: ready in "
                    f"{time.perf_counter() - start:5.1f} s (built the first time, loaded from the cache afterwards)",
                    flush=True,
                )
                samplers.append((f"{prefix}compiled, batch {batch}", model, step, batch))
        runs = {}

        def run_sampler(label, model, step, batch):
            prompt = torch.randint(0, 32000, (batch, 16), device=device)
            start = time.perf_counter()
            first = None
            for n, token in enumerate(
                stream(model, prompt, decode_tokens - 16, temperature=0, repetition_penalty=1.0, step=step), 1
            ):
                if first is None:
                    token.tolist()  # waits for the GPU
                    first = time.perf_counter() - start
            token.tolist()
            runs.setdefault(label, []).append((batch * n / (time.perf_counter() - start), first * 1e3))

        for sampler in samplers:  # warm-up
            run_sampler("warm-up", *sampler[1:])
        for _ in range(rounds):
            for sampler in samplers:
                run_sampler(*sampler)
            rc = llama2c_decode(shape, decode_tokens) if on_cpu else None
            if rc is not None:
                runs.setdefault("llama2.c run.c, batch 1", []).append((rc, float("nan")))
        print(
            f"{'shape':<6} {'sampler (total tok/s over the batch)':<40} {'tok/s':>16} {'first token ms':>15}"
        )
        for label, figures in runs.items():
            if label == "warm-up":
                continue
            rates, firsts = zip(*figures)
            print(f"{name:<6} {label:<40} {min(rates):7.0f}-{max(rates):<8.0f} {min(firsts):15.1f}")
        if "llama2.c run.c, batch 1" in runs:
            theirs = [r for r, _ in runs["llama2.c run.c, batch 1"]]
            for label in [label for label, _, _, batch in samplers if batch == 1]:
                ours = [r for r, _ in runs[label]]
                print(
                    f"{name} {label} / run.c, round by round: {', '.join(f'{a / b:.2f}x' for a, b in zip(ours, theirs))}"
                )
        if name == "15M":  # sample.py's default path: the compiled step once it is built
            headline = median([r for r, _ in runs.get("compiled, batch 1", runs["eager, batch 1"])])
    if headline is not None:  # median over rounds
        print(f"decode tok/s: {headline:.0f}")


def bench_quantize():
    """What --quantize costs in quality, on a trained checkpoint (quantize_out_dir): eval.py's bits per byte
    on its val split, and greedy agreement with fp32 from the openings of `stories`: the share of positions
    whose greedy token is fp32's when both read fp32's greedy text (teacher-forced), and how far the two
    greedy texts run identical (free-running)."""
    import json

    import torch

    import tokenizer
    from checkpoint import load_model
    from generate import encode_prompt, prepare_for_decoding, stream

    torch.set_num_threads(threads)
    if not quantize_out_dir:
        sys.exit("error: --what=quantize needs --quantize_out_dir=DIR, a training run's directory")
    texts = open(stories, encoding="utf-8").read().split(tokenizer.EOT)[:quantize_prompts]
    print(
        f"{quantize_out_dir}: bpb on its val split (eval.py), greedy agreement with fp32 from the first 8 words "
        f"of {len(texts)} stories of {stories}, up to {quantize_tokens} new tokens each (within the context)"
    )
    print(f"{'weights':<8} {'val bpb':>8} {'vs fp32':>8} {'teacher-forced':>15} {'identical, median':>18}")
    reference = None
    for quantize in quantize_choices():
        with tempfile.TemporaryDirectory() as tmp:
            scored = subprocess.run(
                [
                    sys.executable,
                    "eval.py",
                    f"--out_dir={quantize_out_dir}",
                    "--samples=0",
                    "--device=cpu",
                    f"--quantize={quantize}",
                    f"--output={tmp}/eval.json",
                ],
                cwd=HERE,
                capture_output=True,
                text=True,
            )
            if scored.returncode:
                sys.exit(scored.stderr.strip().splitlines()[-1])  # eval.py's own one-line error
            bpb = json.load(open(f"{tmp}/eval.json"))["lm"]["bpb"]
        model, spec, _ = load_model(quantize_out_dir, "", "")
        model = prepare_for_decoding(model, quantize)
        enc, context = tokenizer.load_tokenizer(spec), model.config.max_seq_len
        prompts = [encode_prompt(enc, " ".join(t.split()[:8]), context)[0] for t in texts]
        # greedy, within one context window (so the teacher-forced pass below is one forward)
        outs = [
            torch.cat(
                [
                    torch.tensor([p]),
                    *stream(
                        model,
                        torch.tensor([p]),
                        min(quantize_tokens, context - len(p)),
                        temperature=0,
                        repetition_penalty=1.0,
                    ),
                ],
                1,
            )
            for p in prompts
        ]
        if reference is None:
            reference, ref_bpb = outs, bpb
        agree, same, lengths = [], [], []
        with torch.no_grad():
            for p, ref, out in zip(prompts, reference, outs):
                new = ref[0, len(p) :]
                predicted = model.lm_head(model.hidden(ref[:, :-1]))[0, len(p) - 1 :].argmax(-1)
                agree.append((predicted == new).float().mean().item())
                differ = (out[0, len(p) :] != new).nonzero()
                same.append(differ[0, 0].item() if len(differ) else len(new))
                lengths.append(len(new))
        print(
            f"{quantize or 'fp32':<8} {bpb:8.4f} {bpb / ref_bpb - 1:+8.3%} {sum(agree) / len(agree):15.1%} "
            f"{median(same):11d} of {median(lengths)}",
            flush=True,
        )


def bench_train():
    """ms/iter, tokens/s, MFU, peak memory, attention backend and compile time of a preset's training step,
    on random tokens; on CPU also the ratio to llama2.c's model.py (--llama2c_dir) at the same shape."""
    import torch

    from device import DTYPES, peak_flops
    from model import Llama, ModelConfig, pick_attention_backend

    options = {
        "dim": 288,
        "n_layers": 6,
        "n_heads": 6,
        "n_kv_heads": 0,
        "hidden_dim": 0,
        "vocab_size": 32000,
        "tie_embeddings": True,
        "block_size": 256,
        "batch_size": 8,
    }
    if preset:  # the preset's shape and batch: those of its assignments we know
        assignments = {}
        exec(open(preset).read(), assignments)
        options.update({k: v for k, v in assignments.items() if k in options})
    options.update(
        {k: v for k, v in (("batch_size", train_batch_size), ("vocab_size", train_vocab_size)) if v}
    )
    device, dtype = choose_device(train_device, "--train_device")
    torch.manual_seed(0)
    model = Llama(
        ModelConfig(
            max_seq_len=options["block_size"],
            **{k: options[k] for k in options if k not in ("block_size", "batch_size")},
        )
    ).to(device)
    backend = pick_attention_backend(model.config, device, DTYPES[dtype])
    x = torch.randint(0, options["vocab_size"], (options["batch_size"], options["block_size"]), device=device)
    autocast = torch.autocast(device.split(":")[0], dtype=DTYPES[dtype], enabled=dtype != "float32")
    tokens = x.numel()

    def step_fn(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.startswith("cuda"))
        forward = torch.compile(m) if compile else m

        def step():
            with autocast:
                loss = forward(x, x)
            if loss.dim():  # llama2.c's forward returns the logits and keeps the loss in last_loss
                loss = m.last_loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def time_steps(step):
        start = time.perf_counter()
        for _ in range(train_steps):
            step()
        sync()
        return (time.perf_counter() - start) / train_steps

    ours = step_fn(model)
    start = time.perf_counter()
    ours()
    sync()
    first = time.perf_counter() - start
    peers = {}
    if llama2c_dir and device == "cpu":
        import importlib.util

        spec = importlib.util.spec_from_file_location("llama2c_model", os.path.join(llama2c_dir, "model.py"))
        llama2c = importlib.util.module_from_spec(spec)  # llama2.c's model.py (MIT), read from its checkout
        spec.loader.exec_module(llama2c)
        args = llama2c.ModelArgs(
            dim=options["dim"],
            n_layers=options["n_layers"],
            n_heads=options["n_heads"],
            vocab_size=options["vocab_size"],
            max_seq_len=options["block_size"],
            dropout=0.0,
        )
        theirs = llama2c.Transformer(args)
        peer_step = step_fn(theirs)
        peer_step()
        peers["llama2.c model.py"] = peer_step
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    figures = {"ours": [], **{k: [] for k in peers}}
    for _ in range(rounds):  # alternate, so both see the same machine
        figures["ours"].append(time_steps(ours))
        for label, step in peers.items():
            figures[label].append(time_steps(step))
    peak = peak_flops(device)
    print(
        f"{model.num_params() / 1e6:.2f}M parameters, batch {options['batch_size']} x {options['block_size']}, "
        f"{device} {dtype}, attention {backend}, compile={compile} (first step {first:.1f} s)"
    )
    for label, seconds in figures.items():
        best = min(seconds)
        mfu = (
            ""
            if peak is None
            else f", mfu {model.flops_per_token(options['block_size']) * tokens / best / peak:.1%}"
        )
        print(f"{label:<20} {best * 1e3:8.1f} ms/iter {tokens / best:10,.0f} tok/s (best of {rounds}){mfu}")
    if peers:
        ratios = [a / b for a, b in zip(figures["llama2.c model.py"], figures["ours"])]
        print(f"ours / llama2.c tokens/s, round by round: {', '.join(f'{r:.2f}x' for r in ratios)}")
    if device.startswith("cuda"):
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        import resource

        print(
            f"peak memory (process RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
        )


# name: (train.py arguments, learning rates swept); every run adds the setting's shape, batch and schedule length
RECIPES = {
    "adamw": (["config/train_baseline_adamw.py"], [2e-3, 5e-3, 1e-2]),  # the recipe before this one, lr tuned
    "muon": (
        ["--optimizer=muon", "--lr_schedule=cosine", "--tie_embeddings=True", "--embedding_lr_scale=1"],
        [5e-3, 1e-2, 2e-2],
    ),  # Muon alone
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
    subprocess.run(
        [
            sys.executable,
            "prepare.py",
            f"--input={recipe_out}/train.txt",
            f"--val_input={recipe_out}/val.txt",
            "--vocab_size=4096",
            f"--out_dir={data}",
        ],
        check=True,
        cwd=HERE,
    )
    return data


def recipe_run(data, name, lr, iters):
    """One training run: final val bpb, the (tokens, bpb) curve, and seconds of training (evals left out).
    A finished run is read back from its out_dir rather than run again."""
    import hashlib
    import json

    extra = recipe_shape.split() + [f"--block_size={recipe_block}"] + recipe_args.split()
    out = os.path.join(
        recipe_out, f"{name}_lr{lr:g}_it{iters}_{hashlib.md5(' '.join(extra).encode()).hexdigest()[:6]}"
    )
    every = max(1, iters // 6)
    if os.path.isfile(os.path.join(HERE, out, "result.json")):
        return json.load(open(os.path.join(HERE, out, "result.json")))
    cmd = [
        sys.executable,
        "train.py",
        *RECIPES[name][0],
        f"--data_dir={data}",
        f"--out_dir={out}",
        "--overwrite=True",
        "--batch_size=16",
        "--gradient_accumulation_steps=1",
        f"--max_iters={iters}",
        f"--eval_interval={every}",
        f"--log_interval={every}",
        "--eval_iters=10",
        "--warmup_iters=30",
        "--min_lr=0.0",
        f"--learning_rate={lr}",
        "--compile=False",
        "--device=cpu",
        *extra,
    ]
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
    print(
        f"setting: {recipe_shape} {recipe_args}, context {recipe_block}, batch 16, {recipe_iters} iterations "
        f"({tokens / 1e6:.2f}M tokens), warmup 30, min_lr 0; train: first {recipe_train_stories} stories of "
        f"{stories}, val: the rest; {os.cpu_count()} cores, {recipe_jobs} runs at once"
    )
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
    print(
        f"{'recipe':<9} {'lr':>8} {'val bpb':>8} {'vs ' + names[0]:>9} {'tokens to target':>17} {'s to target':>12}"
    )
    for name, (lr, run) in best.items():
        hit = reached(run, target)
        to_target = (
            f"{hit[0] / 1e6:6.2f}M ({hit[0] / tokens:.2f}x) {hit[1]:12.1f}"
            if hit
            else f"{'not reached':>17} {'':>12}"
        )
        print(f"{name:<9} {lr:8.0e} {run['bpb']:8.4f} {run['bpb'] / target - 1:+9.1%} {to_target}")
    # a WSD run is far from its best before its decay: shorter runs with their own schedule say more
    last, (lr, _) = names[-1], best[names[-1]]
    print(f"\n{last} at lr {lr:g} with shorter schedules (its own decay at the end of each)")
    print(f"{'tokens':>14} {'val bpb':>8} {'reaches target':>15} {'train s':>8}")
    fractions = [float(f) for f in recipe_fractions.split(",") if f]
    for fraction, run in zip(
        fractions, pool.map(lambda f: recipe_run(data, last, lr, round(recipe_iters * f)), fractions)
    ):
        print(
            f"{run['curve'][-1][0] / 1e6:6.2f}M ({fraction:.2f}x) {run['bpb']:8.4f} {str(run['bpb'] <= target):>15} "
            f"{run['seconds']:8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    {
        "prepare": bench_prepare,
        "decode": bench_decode,
        "quantize": bench_quantize,
        "train": bench_train,
        "recipe": bench_recipe,
    }[what]()
