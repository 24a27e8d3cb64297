# The recipe train.py used before Muon became its default, llama2.c's: AdamW at lr 5e-4, weight decay 0.1,
# betas 0.9/0.95, linear warmup then cosine to 5e-5, tied embeddings. For comparisons: python train.py
# config/train_baseline_adamw.py --learning_rate=... (bench.py --what=recipe)
optimizer = "adamw"
lr_schedule = "cosine"
learning_rate = 5e-4
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
warmup_iters = 100
min_lr = 5e-5
tie_embeddings = True
embedding_lr_scale = 1.0
