"""pp.py in miniature: the baseline as a 2-stage 1F1B pipeline on 2 processes (the same rows a step)."""
from configs.pp import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
