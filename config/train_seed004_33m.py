# Seed 004's 33M GPT shape as Llama blocks: dim 384, 6 layers, 6 heads, context 512, tied embeddings as
# in GPT-2. With GPT-2's 50257-id vocabulary this comes to 29.9M parameters (SwiGLU hidden 1024 instead
# of the GPT's 4*384 GELU MLP, and no learned positions).
out_dir = "out/seed004_33m"
dim = 384
n_layers = 6
n_heads = 6
tie_embeddings = True
block_size = 512
batch_size = 64
gradient_accumulation_steps = 4  # 131K tokens per step
optimizer = "adamw"  # seed 004's recipe: AdamW, linear warmup, cosine down to min_lr
lr_schedule = "cosine"
embedding_lr_scale = 1.0
min_lr = 5e-5
learning_rate = 6e-4
warmup_iters = 1000
max_iters = 30000
weight_decay = 0.1
