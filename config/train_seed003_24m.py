# Seed 003's 24.5M shape: dim 448, 7 layers, 7 heads, context 512, with its own 10K vocabulary
# (python prepare.py --vocab_size=10000 --out_dir=data/ts10k). Hidden 1536 and tied embeddings
# give 24.56M parameters with 10000 ids. Cosine schedule, warmup 2000, min_lr 5e-5, weight decay 0.1.
out_dir = "out/seed003_24m"
data_dir = "data/ts10k"
dim = 448
n_layers = 7
n_heads = 7
hidden_dim = 1536
tie_embeddings = True
block_size = 512
batch_size = 64
gradient_accumulation_steps = 4  # 131K tokens per step
optimizer = "adamw"  # seed 003's recipe
lr_schedule = "cosine"
embedding_lr_scale = 1.0
learning_rate = 1e-3
warmup_iters = 2000
min_lr = 5e-5
weight_decay = 0.1
max_iters = 30000
