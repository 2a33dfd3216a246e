"""high_lr.py in miniature: twice the baseline's learning rate."""
from configs.high_lr import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
