# The default recipe at llama2.c's stories15M shape: dim 288, 6 layers, 6 heads, context 256, untied
# embeddings (8.34M parameters with 4096 ids, 24.41M with 32000, 34.92M with GPT-2's 50257). Muon for the
# blocks' matrices, AdamW for the rest, warmup-stable-decay, the lr scaled down with width. The same shape,
# tokens a step and steps as config/train_llama2c_15m.py, which keeps its source's recipe.
out_dir = "out/15m"
dim = 288
n_layers = 6
n_heads = 6
block_size = 256
batch_size = 128
gradient_accumulation_steps = 4  # 131,072 tokens a step
learning_rate = 1e-2
warmup_iters = 1000
max_iters = 100000
eval_interval = 1000
