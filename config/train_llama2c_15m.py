# llama2.c's 15M shape (stories15M): dim 288, 6 layers, 6 heads, context 256, tied embeddings. 15.19M
# parameters with llama2.c's 32000-id vocabulary; 20.45M with GPT-2's 50257; 7.16M with 4096 ids.
out_dir = "out/llama2c_15m"
dim = 288
n_layers = 6
n_heads = 6
block_size = 256
tie_embeddings = True
batch_size = 128
gradient_accumulation_steps = 4  # 131K tokens per step
optimizer = "adamw"  # llama2.c's recipe: AdamW, linear warmup, cosine down to 0
lr_schedule = "cosine"
embedding_lr_scale = 1.0
min_lr = 0.0
learning_rate = 5e-4
max_iters = 100000
warmup_iters = 1000
weight_decay = 0.1
many_pass_weight_decay = many_pass_dropout = 0.0  # no more regularisation on many passes
