"""The CPU quickstart: a 0.9M-parameter Llama, byte-level, on the embedded Shakespeare corpus, a few minutes on 2 cores."""
run_name = "quickstart"
data = "shakespeare"
model = "quickstart"
seq_len = 256
batch_size = 16
total_tokens = 2.5          # millions: 610 steps of 4,096 tokens
warmup_tokens = 0.1
lr = 2e-3
eval_interval = 100
eval_iters = 4
log_interval = 20
checkpoint_interval = 250
sample_prompts = ["ROMEO:\n", "JULIET:\n"]
