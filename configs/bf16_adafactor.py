"""default.py in pure bf16 with Adafactor (factored second moments, no first moment), base lr 1e-3."""
from configs.default import *
run_name = "bf16_adafactor"
dtype = "bf16"
optimizer = "adafactor"
optimizer_state = "bf16"
lr = 1e-3
weight_decay = 0.01          # Adafactor's default in the reference (docs/reference.md, "Optimizers")
