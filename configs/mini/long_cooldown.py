"""long_cooldown.py in miniature: the Infinite-LR cooldown over 70% of the budget instead of 30%."""
from configs.long_cooldown import *
from configs.mini import _scale
_scale.miniature(globals(), "10x")
