"""bf16.py in miniature: pure bf16 weights, AdamW with bf16 moments and stochastic rounding."""
from configs.bf16 import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
