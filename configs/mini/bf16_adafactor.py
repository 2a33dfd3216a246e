"""bf16_adafactor.py in miniature: pure bf16 weights, Adafactor with stochastic rounding."""
from configs.bf16_adafactor import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
