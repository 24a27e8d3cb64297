"""Benchmarks that print figures (no pass/fail): python bench.py --what=prepare|decode|quantize|train|recipe

prepare:  prepare.py on --stories repeated to prepare_mb MB, beside the ceiling (read, split, encode on all
          cores).
decode:   our sampler (eager, compiled, fp32 and --quantize) at llama2.c's shapes with random weights, in
          alternating rounds with llama2.c's run.c (../shared/anchors/llama2c_decode.py) and llama.cpp
          (llama-cpp-python, the same weights as GGUF f32 and q8_0). Ends with `decode tok/s: N` (15M,
          batch 1, fp32, compiled). --decode_device=cuda: on a GPU in sample.py's dtype, in CUDA graphs.
quantize: what --quantize costs on a trained checkpoint (--quantize_out_dir): val bpb, greedy agreement.
train:    a preset's training step on random tokens: ms/iter, tokens/s, MFU, peak memory; --llama2c_dir adds
          llama2.c's model.py beside it.
recipe:   tuned AdamW against train.py's default in one regime (--recipe_regime): lr sweeps at equal tokens,
          scored by eval.py's exact per-story bits per byte on held-out stories of --stories.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from configurator import UserError, configure

what = "prepare"
stories = ""  # a TinyStories-style .txt file (prepare, quantize and recipe read it)
prepare_mb = 200
compile = False  # train: torch.compile the model
threads = 2  # decode: torch threads, run.c's OpenMP threads and llama.cpp's threads
rounds = 3  # decode and train: alternating rounds, for ranges on a noisy machine
decode_shapes = "15M,42M,110M"  # decode: of SHAPES
decode_batches = "1,4,16"  # decode: batch sizes of the fp32 rows
decode_quantize = "bf16,int8"  # decode: also these --quantize choices at batch 1; quantize: those compared
decode_tokens = 256  # decode: positions per sample, prompt included (run.c's --steps): 16 prompt, 240 new
decode_device = "cpu"  # decode: cpu (beside run.c and llama.cpp) or cuda (sample.py's dtype, CUDA graphs)
llama_cpp_types = "f32,q8_0"  # decode: llama.cpp's rows, GGUF types ('' for none)
quantize_out_dir = ""  # quantize: the trained checkpoint's directory
quantize_prompts = 16  # quantize: greedy samples, one per story opening
quantize_tokens = 240  # quantize: new tokens per greedy sample
preset = "config/train_llama2c_15m.py"  # train: the config file whose shape and batch are timed
train_device = ""  # train: '' picks cuda, then mps, then cpu
train_steps = 5  # train: steps timed per round, after one warm-up step
train_batch_size = 0  # train: replaces the preset's batch_size (0: keep it)
train_vocab_size = 0  # train: the vocabulary (0: 32000, llama2.c's)
llama2c_dir = ""  # train: a checkout of llama2.c, whose model.py is timed beside ours
recipe_regime = "many_passes"  # recipe: one_pass (batch 8 x 256, 200 steps) or many_passes (16 x 256, 600)
recipes = "adamw,default"  # recipe: which of RECIPES, comma-separated; the first is the baseline
recipe_lrs = ""  # recipe: replaces the sweeps, e.g. "adamw=4e-3;default=1e-2,2e-2"
recipe_seeds = "1337"  # recipe: each run once per seed, e.g. "1337,2"
recipe_args = ""  # recipe: more train.py arguments for every run, to measure one lever
recipe_jobs = 2  # recipe: runs at once, each on cores / recipe_jobs threads
recipe_out = "out/bench_recipe"  # recipe: runs and the prepared data are kept here, and read back
checks = dict(what=("prepare", "decode", "quantize", "train", "recipe"), rounds="[1, inf)")
checks |= dict(threads="[1, inf)", recipe_regime=("one_pass", "many_passes"), recipe_jobs="[1, inf)")
configure(globals(), checks=checks)
HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {  # llama2.c's stories15M, 42M and 110M
    "15M": dict(dim=288, n_layers=6, n_heads=6, max_seq_len=256),
    "42M": dict(dim=512, n_layers=8, n_heads=8, max_seq_len=1024),
    "110M": dict(dim=768, n_layers=12, n_heads=12, max_seq_len=1024),
}
VOCAB = 32000  # llama2.c's
REGIMES = {"one_pass": (8, 200), "many_passes": (16, 600)}  # batch of 256-token windows, iterations
# name: (train.py arguments, learning rates swept); every run adds the setting's shape, batch and length.
# adamw is llama2.c's recipe with its lr tuned, default train.py's defaults.
RECIPES = dict(
    adamw=(["config/train_baseline_adamw.py"], [1e-3, 2e-3, 4e-3, 8e-3]),
    default=([], [5e-3, 1e-2, 2e-2, 4e-2]),
)


def story_file():
    if not os.path.isfile(stories):
        raise UserError(f"--what={what} reads stories: pass --stories=PATH to a TinyStories-style .txt file")
    return stories


def numbers(option, text, kind):
    """A comma-separated option as numbers, or one line saying which option is not."""
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--{option}: {text!r} is not a comma-separated list of {kind.__name__}s")


def median(values):
    return sorted(values)[len(values) // 2]


def run(cmd, **kwargs):
    """A repository script as a subprocess; its own one-line error ends this run."""
    done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise UserError(f"{' '.join(cmd[1:3])}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return done


def bench_prepare():
    ceiling_code = (
        "import sys; from multiprocessing import Pool; sys.path.insert(0, sys.argv[2]); import tokenizer\n"
        "def work(s): return sum(len(tokenizer.gpt2_encoding().encode_ordinary(x)) for x in s)\n"
        "if __name__ == '__main__':\n"
        "    s = open(sys.argv[1], encoding='utf-8').read().split(tokenizer.EOT); n = len(s) // 64 + 1\n"
        "    with Pool() as pool: print(sum(pool.imap(work, [s[i:i + n] for i in range(0, len(s), n)])))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        text, big = open(story_file(), encoding="utf-8").read(), os.path.join(tmp, "big.txt")
        with open(big, "w", encoding="utf-8") as f:
            f.write(text * max(1, round(prepare_mb * 1e6 / len(text.encode()))))
        mb = os.path.getsize(big) / 1e6
        print(f"input: {mb:.0f} MB ({stories} repeated), {os.cpu_count()} cores")
        began = time.perf_counter()
        run([sys.executable, "-c", ceiling_code, big, HERE])
        ceiling, began = time.perf_counter() - began, time.perf_counter()
        run([sys.executable, "prepare.py", f"--input={big}", f"--out_dir={tmp}/out"])
        prep = time.perf_counter() - began
        for label, seconds in (
            ("ceiling: read, split, Pool.map encode_ordinary", ceiling),
            ("python prepare.py (gpt2, writes train/val.bin)", prep),
        ):
            print(f"{label:<48} {seconds:8.2f} s {mb / seconds:8.1f} MB/s")


def llama2c_decode(shape):
    """run.c's own "achieved tok/s" at this shape, or None where the anchor is not beside the repository."""
    anchor = os.path.join(HERE, "..", "shared", "anchors", "llama2c_decode.py")
    if not os.path.isfile(anchor):
        return None
    args = [f"--{k}={shape[k]}" for k in ("dim", "n_layers", "n_heads")] + [
        f"--seq_len={shape['max_seq_len']}"
    ]
    args += [f"--steps={decode_tokens}", f"--threads={threads}"]
    out = subprocess.run([sys.executable, anchor, *args], capture_output=True, text=True)
    found = re.search(r"([0-9.]+) tok/s", out.stdout)
    return float(found.group(1)) if found else None


def synthetic_spec(vocab_size):
    """A byte-level BPE of exactly vocab_size ids (bytes, then byte pairs), so that random weights of
    llama2.c's 32000-id shapes can be written as GGUF: decoding random weights never reads what ids spell."""
    import tokenizer

    pairs = [bytes([a, b]) for a in range(256) for b in range(256)][: vocab_size - 257]
    return tokenizer.bpe_spec({t: i for i, t in enumerate([bytes([b]) for b in range(256)] + pairs)})


def llama_cpp_sampler(model, gguf_type, tmp, new):
    """A sampler timed as ours, greedy, with llama.cpp on the model's weights exported as GGUF, or None when
    llama-cpp-python or gguf is missing."""
    try:
        import llama_cpp
        import numpy as np

        from llamacpp import export_gguf, open_in_llama_cpp
    except ImportError:
        return None
    path = os.path.join(tmp, f"{gguf_type}.gguf")
    weights = {
        "model_args": vars(model.config),
        "model": model.state_dict(),
        "tokenizer": synthetic_spec(VOCAB),
    }
    export_gguf(weights, path, gguf_type)
    llm = open_in_llama_cpp(path, model.config.max_seq_len, threads, n_batch=64)

    def sample():
        prompt = [int(t) for t in np.random.randint(0, VOCAB, 16)]
        began, first = time.perf_counter(), None
        llm.reset()
        llm.eval(prompt)
        for i in range(new):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(VOCAB,))
            token = int(logits.argmax())
            first = first or time.perf_counter() - began
            if i < new - 1:
                llm.eval([token])
        return time.perf_counter() - began, first

    return sample


def bench_decode():
    """Our sampler beside run.c and llama.cpp, alternating in the same minutes: both of sample.py's paths,
    eager (a checkpoint whose compiled decode step is not built yet) and the compiled step, and at batch 1
    each --quantize of decode_quantize. Tokens per second count the new tokens, over the time from the prompt
    to the last one; the first token's time is the prefill and one step."""
    import torch

    from device import DTYPES, choose
    from fastdecode import QUANTIZE, compile_for_decoding, prepare_for_decoding
    from generate import stream
    from model import Llama, ModelConfig

    torch.set_num_threads(threads)
    device, dtype = choose(decode_device, "", "--decode_device")
    on_cpu = device.startswith("cpu")
    quantized = [q for q in decode_quantize.split(",") if q] if on_cpu else []
    if set(quantized) - set(QUANTIZE):
        raise UserError(f"--decode_quantize={decode_quantize}: use bf16 and/or int8")
    new = decode_tokens - 16
    print(
        f"{device} ({threads} threads), {dtype}, greedy, 16-token prompt, {new} new tokens, {rounds} rounds"
    )
    headline = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in decode_shapes.split(","):
            if name not in SHAPES:
                raise UserError(f"--decode_shapes: {name} is not one of {', '.join(SHAPES)}")
            shape, samplers = SHAPES[name], {}  # label: (decode(prompt) -> (seconds, first), batch)
            config = ModelConfig(vocab_size=VOCAB, tie_embeddings=True, **shape)
            for quantize in ["", *quantized]:
                torch.manual_seed(0)  # the same weights for every variant
                model = prepare_for_decoding(Llama(config).to(device, DTYPES[dtype]), quantize)
                for batch in numbers("decode_batches", decode_batches, int) if not quantize else [1]:
                    steps = {"eager": None}
                    try:
                        began = time.perf_counter()
                        steps["compiled"] = compile_for_decoding(model, batch)
                        seconds = time.perf_counter() - began
                        print(f"{name} {quantize} compiled step, batch {batch}: {seconds:.1f} s")
                    except RuntimeError as e:  # no C++ compiler, say: the eager rows still stand
                        print(f"{name} no compiled decode step: {e}")
                    for kind, step in steps.items():
                        label = f"ours, {kind}, {quantize or dtype.replace('float', 'fp')}, batch {batch}"
                        samplers[label] = (ours_sampler(model, step, batch, new, stream, torch), batch)
            if on_cpu:
                torch.manual_seed(0)
                reference = Llama(config)
                for gguf_type in filter(None, llama_cpp_types.split(",")):
                    sampler = llama_cpp_sampler(reference, gguf_type, tmp, new)
                    if sampler:
                        samplers[f"llama.cpp, {gguf_type}, batch 1"] = (sampler, 1)
            figures = {label: [] for label in samplers}
            for sampler, _ in samplers.values():  # warm-up
                sampler()
            for _ in range(rounds):
                for label, (sampler, batch) in samplers.items():
                    seconds, first = sampler()
                    figures[label].append((batch * new / seconds, first * 1e3))
                rc = llama2c_decode(shape) if on_cpu else None
                if rc is not None:
                    figures.setdefault("llama2.c run.c, fp32, batch 1", []).append((rc, float("nan")))
            print(f"{'shape':<5} {'sampler (tokens/s over the batch)':<38} {'tok/s, min-max':>16} first ms")
            for label, rows in figures.items():
                rates, firsts = zip(*rows)
                print(f"{name:<5} {label:<38} {min(rates):7.0f}-{max(rates):<8.0f} {min(firsts):9.1f}")
            fp, rc = dtype.replace("float", "fp"), "llama2.c run.c, fp32, batch 1"
            pairs = [(f"ours, eager, {fp}, batch 1", rc), (f"ours, compiled, {fp}, batch 1", rc)]
            pairs += [(f"ours, compiled, {fp}, batch 1", "llama.cpp, f32, batch 1")]
            pairs += [(f"ours, compiled, {q}, batch 1", "llama.cpp, q8_0, batch 1") for q in quantized]
            for ours, anchor in [(a, b) for a, b in pairs if a in figures and b in figures]:
                ratios = ", ".join(f"{a[0] / b[0]:.2f}x" for a, b in zip(figures[ours], figures[anchor]))
                print(f"{name} {ours} / {anchor}, round by round: {ratios}")
            if name == "15M" and f"ours, compiled, {fp}, batch 1" in figures:
                headline = median([r for r, _ in figures[f"ours, compiled, {fp}, batch 1"]])
    if headline is not None:
        print(f"decode tok/s: {headline:.0f}")


def ours_sampler(model, step, batch, new, stream, torch):
    def sample():
        prompt = torch.randint(0, VOCAB, (batch, 16), device=model.embed_tokens.weight.device)
        began, first = time.perf_counter(), None
        for token in stream(model, prompt, new, temperature=0, repetition_penalty=1.0, step=step):
            if first is None:
                token.tolist()  # waits for a GPU
                first = time.perf_counter() - began
        token.tolist()
        return time.perf_counter() - began, first

    return sample


def bench_quantize():
    """What --quantize costs in quality, on a trained checkpoint: eval.py's bits per byte on its val split,
    and greedy agreement with fp32 from the openings of --stories: the share of positions whose greedy token
    is fp32's when both read fp32's greedy text (teacher-forced), and how far the greedy texts stay identical.
    """
    import torch

    import tokenizer
    from fastdecode import load_for_decoding
    from generate import encode_prompt, stream

    torch.set_num_threads(threads)
    if not quantize_out_dir:
        raise UserError("--what=quantize needs --quantize_out_dir=DIR, a training run's directory")
    texts = open(story_file(), encoding="utf-8").read().split(tokenizer.EOT)[:quantize_prompts]
    print(f"{quantize_out_dir}: val bpb (eval.py) and greedy agreement with fp32 from {len(texts)} openings")
    print(f"{'weights':<8} {'val bpb':>8} {'vs fp32':>8} {'teacher-forced':>15} {'identical, median':>18}")
    reference = None
    for quantize in ["", *filter(None, decode_quantize.split(","))]:
        with tempfile.TemporaryDirectory() as tmp:
            args = [f"--out_dir={quantize_out_dir}", f"--quantize={quantize}", f"--output={tmp}/eval.json"]
            run([sys.executable, "eval.py", "--samples=0", "--device=cpu", *args])
            bpb = json.load(open(f"{tmp}/eval.json"))["lm"]["bpb"]
        model, enc, _, _ = load_for_decoding(quantize_out_dir, device="cpu", quantize=quantize, compile=False)
        context = model.config.max_seq_len
        prompts = [encode_prompt(enc, " ".join(t.split()[:8]), context)[0] for t in texts]
        greedy = dict(temperature=0, repetition_penalty=1.0)
        # within one context window, so the teacher-forced pass below is one forward
        new = [
            stream(model, torch.tensor([p]), min(quantize_tokens, context - len(p)), **greedy)
            for p in prompts
        ]
        outs = [torch.cat([torch.tensor([p]), *tokens], 1) for p, tokens in zip(prompts, new)]
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
        quality = f"{bpb:8.4f} {bpb / ref_bpb - 1:+8.3%} {sum(agree) / len(agree):15.1%}"
        print(f"{quantize or 'fp32':<8} {quality} {median(same):11d} of {median(lengths)}", flush=True)


def bench_train():
    """ms/iter, tokens/s, MFU, peak memory, attention backend and compile time of a preset's training step
    (forward, chunked loss, backward, AdamW) on random tokens; on CPU also llama2.c's model.py beside it."""
    import torch

    from device import DTYPES, choose, peak_flops
    from model import Llama, ModelConfig, pick_attention_backend

    options = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=0, hidden_dim=0, vocab_size=VOCAB)
    options |= dict(tie_embeddings=True, block_size=256, batch_size=8)
    if preset:  # the preset's shape and batch: those of its assignments we know
        assignments = {}
        exec(open(preset).read(), assignments)
        options.update({k: v for k, v in assignments.items() if k in options})
    options |= {k: v for k, v in dict(batch_size=train_batch_size, vocab_size=train_vocab_size).items() if v}
    device, dtype = choose(train_device, "", "--train_device")
    torch.manual_seed(0)
    shape = {k: v for k, v in options.items() if k not in ("block_size", "batch_size")}
    model = Llama(ModelConfig(max_seq_len=options["block_size"], **shape)).to(device)
    backend = pick_attention_backend(model.config, device, DTYPES[dtype])
    x = torch.randint(0, options["vocab_size"], (options["batch_size"], options["block_size"]), device=device)
    autocast = torch.autocast(device.split(":")[0], dtype=DTYPES[dtype], enabled=dtype != "float32")
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None

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

    def time_steps(step):
        began = time.perf_counter()
        for _ in range(train_steps):
            step()
        sync()
        return (time.perf_counter() - began) / train_steps

    steps = {"ours": step_fn(model)}
    began = time.perf_counter()
    steps["ours"]()
    sync()
    first = time.perf_counter() - began
    if llama2c_dir and device == "cpu":
        import importlib.util

        spec = importlib.util.spec_from_file_location("llama2c_model", os.path.join(llama2c_dir, "model.py"))
        llama2c = importlib.util.module_from_spec(spec)  # llama2.c's model.py (MIT), read from its checkout
        spec.loader.exec_module(llama2c)
        args = {k: options[k] for k in ("dim", "n_layers", "n_heads", "vocab_size")}
        args = llama2c.ModelArgs(**args, max_seq_len=options["block_size"], dropout=0.0)
        steps["llama2.c model.py"] = step_fn(llama2c.Transformer(args))
        steps["llama2.c model.py"]()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    figures = {label: [] for label in steps}
    for _ in range(rounds):  # alternate, so both see the same machine
        for label, step in steps.items():
            figures[label].append(time_steps(step))
    peak, tokens = peak_flops(device), x.numel()
    batch = f"batch {options['batch_size']} x {options['block_size']}, {device} {dtype}, attention {backend}"
    print(f"{model.num_params() / 1e6:.2f}M parameters, {batch}, compile={compile} (first step {first:.1f}s)")
    for label, seconds in figures.items():
        best = min(seconds)
        flops = model.flops_per_token(options["block_size"]) * tokens / best
        mfu = "" if peak is None else f", mfu {flops / peak:.1%}"
        print(f"{label:<20} {best * 1e3:8.1f} ms/iter {tokens / best:10,.0f} tok/s (best of {rounds}){mfu}")
    if len(steps) > 1:
        ratios = [a / b for a, b in zip(figures["llama2.c model.py"], figures["ours"])]
        print(f"ours / llama2.c tokens/s, round by round: {', '.join(f'{r:.2f}x' for r in ratios)}")
    if device.startswith("cuda"):
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak memory (process RSS): {rss:.2f} GiB")


def recipe_data():
    """prepare.py's 4096-id BPE on the first 2,000 stories of --stories, and those after them as raw text for
    eval.py (cached in recipe_out)."""
    import tokenizer

    data, val = os.path.join(recipe_out, "data"), os.path.join(recipe_out, "val.txt")
    if os.path.isfile(os.path.join(data, "meta.json")):
        return data, val
    texts = [t.strip() for t in open(story_file(), encoding="utf-8").read().split(tokenizer.EOT) if t.strip()]
    os.makedirs(recipe_out, exist_ok=True)
    for path, part in ((os.path.join(recipe_out, "train.txt"), texts[:2000]), (val, texts[2000:])):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(t + f"\n{tokenizer.EOT}\n" for t in part)
    args = [f"--input={recipe_out}/train.txt", f"--val_input={val}", "--vocab_size=4096", f"--out_dir={data}"]
    run([sys.executable, "prepare.py", *args])
    return data, val


def recipe_run(data, val, name, lr, seed):
    """One training run and eval.py's exact bits per byte of its final weights on the held-out stories; a
    finished run of the same options and the same train.py and model.py is read back, not run again."""
    import hashlib

    batch, iters = REGIMES[recipe_regime]
    args = [*RECIPES[name][0], f"--learning_rate={lr}", f"--seed={seed}", *recipe_args.split()]
    code = "".join(open(os.path.join(HERE, f)).read() for f in ("train.py", "model.py"))
    key = hashlib.md5(" ".join([recipe_regime, *args, code]).encode()).hexdigest()[:8]
    out = os.path.join(recipe_out, f"{recipe_regime}_{name}_lr{lr:g}_seed{seed}_{key}")
    if not os.path.isfile(os.path.join(out, "result.json")):
        setting = f"--dim=128 --n_layers=4 --n_heads=4 --block_size=256 --batch_size={batch} --min_lr=0.0"
        setting += f" --warmup_iters=30 --max_iters={iters} --eval_interval={iters // 4} --eval_iters=10"
        setting += " --gradient_accumulation_steps=1 --compile=False --device=cpu --overwrite=True"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // recipe_jobs))}
        config = len(RECIPES[name][0])  # the config file first: the setting's options after it win
        places = [f"--data_dir={data}", f"--out_dir={out}"]
        run([sys.executable, "train.py", *args[:config], *places, *setting.split(), *args[config:]], env=env)
        scoring = [f"--out_dir={out}", "--ckpt=ckpt.pt", f"--input={val}", f"--output={out}/eval.json"]
        run([sys.executable, "eval.py", *scoring, "--samples=0"], env=env)
        log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
        bpb = json.load(open(os.path.join(out, "eval.json")))["lm"]["bpb"]
        loss = [r["loss"] for r in log if "loss" in r][-1]
        result = dict(bpb=bpb, elapsed=log[-1]["elapsed"], train_loss=loss)
        json.dump(result, open(os.path.join(out, "result.json"), "w"))
    return json.load(open(os.path.join(out, "result.json")))


def bench_recipe():
    from concurrent.futures import ThreadPoolExecutor

    batch, iters = REGIMES[recipe_regime]
    names, seeds = recipes.split(","), numbers("recipe_seeds", recipe_seeds, int)
    if any("=" not in p for p in recipe_lrs.split(";") if p):
        raise UserError(f"--recipe_lrs={recipe_lrs}: write NAME=LR,LR;NAME=LR, e.g. adamw=4e-3;default=1e-2")
    lrs = dict(p.split("=", 1) for p in recipe_lrs.split(";") if p)
    lrs = {name: numbers("recipe_lrs", values, float) for name, values in lrs.items()}
    unknown = set(names) - set(RECIPES)
    if unknown:
        raise UserError(f"--recipes: {', '.join(unknown)} unknown; use {', '.join(RECIPES)}")
    data, val = recipe_data()
    print(
        f"{recipe_regime}: dim 128, 4 layers, 4 heads, batch {batch} x 256, {iters} iterations "
        f"({batch * 256 * iters / 1e6:.2f}M tokens), warmup 30, decay to 0, "
        f"{recipe_args or 'no extra options'}; train: the first 2,000 stories of {stories}, "
        f"val: eval.py's per-story bpb on the rest, seeds {seeds}"
    )
    jobs = [(name, lr, seed) for name in names for lr in lrs.get(name, RECIPES[name][1]) for seed in seeds]
    with ThreadPoolExecutor(recipe_jobs) as pool:
        results = dict(zip(jobs, pool.map(lambda job: recipe_run(data, val, *job), jobs)))
    print(f"{'recipe':<9} {'lr':>8} {'val bpb, per seed':>24} {'mean':>8} {'train loss':>11}")
    best = {}
    for name in names:
        for lr in lrs.get(name, RECIPES[name][1]):
            runs = [results[(name, lr, seed)] for seed in seeds]
            mean = sum(r["bpb"] for r in runs) / len(runs)
            per_seed = ", ".join(f"{r['bpb']:.4f}" for r in runs)
            print(f"{name:<9} {lr:8.0e} {per_seed:>24} {mean:8.4f} {runs[0]['train_loss']:11.3f}")
            if name not in best or mean < best[name][1]:
                best[name] = (lr, mean)
    baseline = best[names[0]][1]
    for name, (lr, mean) in best.items():
        print(f"best {name}: lr {lr:g}, val bpb {mean:.4f}, {mean / baseline:.3f}x {names[0]}'s")


BENCHES = dict(prepare=bench_prepare, decode=bench_decode, quantize=bench_quantize, train=bench_train)
{**BENCHES, "recipe": bench_recipe}[what]()
