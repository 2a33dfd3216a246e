"""ten_chinchilla.py in miniature: the 10x group's baseline, 10x Chinchilla plus 1x of annealing."""
from configs.ten_chinchilla import *
from configs.mini import _scale
_scale.miniature(globals(), "10x")
