"""The CPU quickstart: a 0.2M-parameter Llama trained with Muon, byte-level, on the embedded Shakespeare corpus, ~2 minutes on 2 cores."""
# Why this recipe (docs/experiments.md, "The quickstart recipe"): with ~2 minutes of 2 cores, more tokens beat a wider
# model. The quickstart preset (width 128, 0.85M parameters) saw 2.5M tokens in that time and reached 2.55
# bits/byte; at width 64 (0.2M parameters) a step is 2.5x cheaper, and Muon learns more from each token
# than AdamW at this size (configs/mini: 1x_muon against 1x_default).
run_name = "quickstart"
data = "shakespeare"
model = "quickstart"
dim = 64                    # narrower than the preset's 128: more tokens in the same time
ffn_dim = 176               # ~2.75 x dim, as the preset
seq_len = 128               # shorter rows: attention costs less at this width, and bytes need little context
batch_size = 16             # 2,048 tokens a step: more, smaller steps
total_tokens = 5.0          # millions: 2,441 steps
warmup_tokens = 0.1
optimizer = "muon"          # Newton-Schulz-orthogonalised momentum on the block matrices, AdamW on the rest
lr = 3e-3
eval_interval = 250
eval_iters = 4
log_interval = 20
checkpoint_interval = 1000
sample_prompts = ["ROMEO:\n", "JULIET:\n"]
