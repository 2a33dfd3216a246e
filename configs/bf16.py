"""default.py in pure bf16: bf16 weights and AdamW moments, stochastic rounding, base lr 4e-4."""
from configs.default import *
run_name = "bf16"
dtype = "bf16"
optimizer = "adamw"
optimizer_state = "bf16"
lr = 4e-4                    # at 16,384 tokens per step (scaled like default.py's): the best of the reference's sweep
                             # (docs/reference.md, "Results")
