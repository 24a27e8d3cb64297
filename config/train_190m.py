# The default recipe at the 190M shape of Test-1-4000: dim 768, 12 layers, 12 heads, hidden 3072, context
# 2048, untied embeddings (190.46M parameters with GPT-2's 50257 ids). Muon for the blocks' matrices, AdamW
# for the rest, warmup-stable-decay, the lr scaled down with width. The same shape, tokens a step and steps as
# config/train_test1_190m.py, which keeps its source's recipe.
out_dir = "out/190m"
dim = 768
n_layers = 12
n_heads = 12
hidden_dim = 3072
block_size = 2048
batch_size = 16
gradient_accumulation_steps = 8  # 262,144 tokens a step
learning_rate = 5e-3
warmup_iters = 400
max_iters = 4000
eval_interval = 500
