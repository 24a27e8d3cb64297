# A tiny model that trains in about a minute on 2 CPU cores: checks the whole pipeline end to end, with the
# default recipe. 0.72M parameters with a 4096-id BPE (prepare.py --vocab_size=4096), 6.63M with GPT-2's
# 50257.
out_dir = "out/smoke"
data_dir = "data/ts4k"  # python prepare.py --vocab_size=4096 --out_dir=data/ts4k [--input=...]
dim = 64
n_layers = 4
n_heads = 4
n_kv_heads = 2
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 200
eval_interval = 100
eval_iters = 4
log_interval = 20
warmup_iters = 20
compile = False
