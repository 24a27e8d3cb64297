"""Benchmarks that print figures (no pass/fail): python bench.py --what=prepare|decode

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

what = "prepare"
stories = "../shared/tinystories/stories_2500.txt"
prepare_mb = 200
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
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


if __name__ == "__main__":
    {"prepare": bench_prepare}[what]()
