# llama2.c's recipe: AdamW at lr 5e-4, weight decay 0.1, betas 0.9/0.95, linear warmup then cosine to 5e-5,
# tied embeddings, and no more regularisation on many passes. For comparisons: python train.py
# config/train_baseline_adamw.py --learning_rate=... (bench.py --what=recipe)
optimizer = "adamw"
lr_schedule = "cosine"
learning_rate = 5e-4
weight_decay = 0.1
many_pass_weight_decay = many_pass_dropout = 0.0  # no more regularisation on many passes
beta1 = 0.9
beta2 = 0.95
warmup_iters = 100
min_lr = 5e-5
tie_embeddings = True
embedding_lr_scale = 1.0
