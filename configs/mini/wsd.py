"""wsd.py in miniature: warmup-stable-decay (WSD-S) instead of Infinite-LR."""
from configs.wsd import *
from configs.mini import _scale
_scale.miniature(globals(), "10x")
