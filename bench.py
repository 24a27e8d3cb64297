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


if __name__ == "__main__":
    {"prepare": bench_prepare, "decode": bench_decode}[what]()
