"""deepone.py in miniature: DeepNet post-norm, ReLU-GLU, trainable ALiBi, no RoPE."""
from configs.deepone import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
