# Reproduces the 190M Llama Test-1-4000 with its own recipe: dim 768, 12 layers, 12 heads, hidden 3072,
# context 2048, untied, GPT-2's 50257 ids (190.46M parameters); AdamW betas 0.9/0.95, lr 5e-4 one-cycle,
# weight decay 0.01, 262,144 tokens a step (16 x 2048 x 8). On 8 GPUs:
# torchrun --standalone --nproc_per_node=8 train.py config/train_test1_190m.py
out_dir = "out/test1_190m"
dim = 768
n_layers = 12
n_heads = 12
hidden_dim = 3072
tie_embeddings = False
block_size = 2048
batch_size = 16
gradient_accumulation_steps = 8
optimizer = "adamw"  # its recipe
lr_schedule = "onecycle"
embedding_lr_scale = 1.0
learning_rate = 5e-4
warmup_iters = 1200
min_lr = 5e-6
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.01
many_pass_weight_decay = many_pass_dropout = 0.0  # no more regularisation on many passes
max_iters = 4000
eval_interval = 500
