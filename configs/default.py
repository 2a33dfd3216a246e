"""The reference baseline: Llama medium (162M), cl100k_32k, Infinite-LR, 1x Chinchilla (2.27B tokens), 4 GPUs x 4 x 4096."""
# The reference's settings and results: docs/reference.md, "The reference experiments" and "Results".
run_name = "default"
# the SmolLM corpus mix: fineweb-edu-dedup and cosmopedia-v2 drawn as one balance_remaining group
# (python prepare.py smollm-fineweb-edu; python prepare.py smollm-cosmopedia)
data = "smollm-fineweb-edu+smollm-cosmopedia"
tokenizer = "cl100k_32k"     # 32,000 tokens, as the reference
model = "llama-medium"
seq_len = 4096
batch_size = 4               # per GPU: with 4 GPUs, 65,536 tokens per step
total_tokens = 2270          # millions: 20 x the 113M non-embedding parameters
schedule = "infinite"
lr = 1.5e-4                  # at 16,384 tokens per step, scaled by sqrt: 3.0e-4 at 65,536
base_batch_tokens = 16384
warmup_tokens = 50           # a short ramp (the reference does not state its length): ~760 steps
cooldown_p = 0.3
min_cooldown_tokens = 6800   # longer than the 1x run: the cooldown is still going at its end
decay_shape = "rsqrt"
weight_decay = 0.1
grad_clip = 1.0
compile = True
eval_interval = 1000
eval_iters = 20
log_interval = 50
checkpoint_interval = 2000
