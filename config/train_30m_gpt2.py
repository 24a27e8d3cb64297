# A 33M GPT's shape as Llama blocks: dim 384, 6 layers, 6 heads, context 512, tied embeddings as in GPT-2;
# with GPT-2's 50257 ids, 29.9M parameters (a SwiGLU hidden of 1024 for the GPT's 4 x 384 GELU MLP, no learned
# positions). AdamW, linear warmup, cosine to min_lr.
out_dir = "out/30m_gpt2"
dim = 384
n_layers = 6
n_heads = 6
tie_embeddings = True
block_size = 512
batch_size = 64
gradient_accumulation_steps = 4  # 131K tokens per step
optimizer = "adamw"
lr_schedule = "cosine"
embedding_lr_scale = 1.0
min_lr = 5e-5
learning_rate = 6e-4
warmup_iters = 1000
max_iters = 30000
weight_decay = 0.1
many_pass_weight_decay = many_pass_dropout = 0.0  # no more regularisation on many passes
