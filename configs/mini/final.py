"""final.py in miniature: the curriculum with WSD-S at twice the learning rate."""
from configs.final import *
from configs.mini import _scale
_scale.miniature(globals(), "10x")
