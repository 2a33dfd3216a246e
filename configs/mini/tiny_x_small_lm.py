"""tiny_x_small_lm.py in miniature: a curriculum, Python's docs fading into Shakespeare."""
from configs.tiny_x_small_lm import *
from configs.mini import _scale
_scale.miniature(globals(), "10x")
