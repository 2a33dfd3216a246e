"""default.py at twice the learning rate: base lr 3e-4, the highest that did not diverge with AMP."""
from configs.default import *
run_name = "high_lr"
lr = 3e-4
