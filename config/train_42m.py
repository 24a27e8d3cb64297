# The default recipe at llama2.c's stories42M shape: dim 512, 8 layers, 8 heads, context 1024, untied
# embeddings (29.5M parameters with 4096 ids, 58.07M with 32000, 76.77M with GPT-2's 50257). Muon for the
# blocks' matrices, AdamW for the rest, warmup-stable-decay, the lr scaled down with width. The same shape,
# tokens a step and steps as config/train_llama2c_42m.py, which keeps its source's recipe.
out_dir = "out/42m"
dim = 512
n_layers = 8
n_heads = 8
block_size = 1024
batch_size = 32
gradient_accumulation_steps = 4  # 131,072 tokens a step
learning_rate = 8e-3
warmup_iters = 1000
max_iters = 100000
eval_interval = 1000
