# The default recipe at llama2.c's stories110M shape: dim 768, 12 layers, 12 heads, context 1024, untied
# embeddings (91.25M parameters with 4096 ids, 134.11M with 32000, 162.15M with GPT-2's 50257). Muon for the
# blocks' matrices, AdamW for the rest, warmup-stable-decay, the lr scaled down with width. The same shape,
# tokens a step and steps as config/train_llama2c_110m.py, which keeps its source's recipe.
out_dir = "out/110m"
dim = 768
n_layers = 12
n_heads = 12
block_size = 1024
batch_size = 32
gradient_accumulation_steps = 4  # 131,072 tokens a step
learning_rate = 6e-3
warmup_iters = 1000
max_iters = 200000
eval_interval = 1000
