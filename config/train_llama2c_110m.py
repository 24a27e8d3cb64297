# llama2.c's 110M shape (stories110M): dim 768, 12 layers, 12 heads, context 1024, tied embeddings. 109.5M
# parameters with llama2.c's 32000-id vocabulary; 123.6M with GPT-2's 50257.
out_dir = "out/llama2c_110m"
dim = 768
n_layers = 12
n_heads = 12
block_size = 1024
tie_embeddings = True
batch_size = 32
gradient_accumulation_steps = 4  # 131K tokens per step
optimizer = "adamw"  # llama2.c's recipe: AdamW, linear warmup, cosine down to 0
lr_schedule = "cosine"
embedding_lr_scale = 1.0
min_lr = 0.0
learning_rate = 3e-4
max_iters = 200000
warmup_iters = 1000
weight_decay = 0.1
many_pass_weight_decay = many_pass_dropout = 0.0  # no more regularisation on many passes
