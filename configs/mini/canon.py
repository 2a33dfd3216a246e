"""canon.py in miniature: Canon-A, no positional encoding, QK-norm."""
from configs.canon import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
