# A 24.5M Llama with its own 10,000-id BPE (python prepare.py --vocab_size=10000 --out_dir=data/ts10k): dim
# 448, 7 layers, 7 heads, hidden 1536, tied embeddings, context 512 (24.56M parameters); AdamW, cosine, warmup
# 2000, min_lr 5e-5, weight decay 0.1.
out_dir = "out/24m_bpe10k"
data_dir = "data/ts10k"
dim = 448
n_layers = 7
n_heads = 7
hidden_dim = 1536
tie_embeddings = True
block_size = 512
batch_size = 64
gradient_accumulation_steps = 4  # 131K tokens per step
optimizer = "adamw"
lr_schedule = "cosine"
embedding_lr_scale = 1.0
learning_rate = 1e-3
warmup_iters = 2000
min_lr = 5e-5
weight_decay = 0.1
many_pass_weight_decay = many_pass_dropout = 0.0  # no more regularisation on many passes
max_iters = 30000
