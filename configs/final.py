"""The best knobs combined: the TinyStories -> SmolLM curriculum, WSD-S, and base lr 3e-4 (high_lr.py's)."""
from configs.tiny_x_small_lm import *
run_name = "final"
schedule = "wsd"
lr = 3e-4
