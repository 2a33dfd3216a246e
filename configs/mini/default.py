"""default.py in miniature: the 1x group's baseline (Infinite-LR, AdamW, fp32)."""
from configs.default import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
