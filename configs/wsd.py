"""ten_chinchilla.py with WSD-S: the peak LR held until the final 1x, then rsqrt decay to min_lr."""
from configs.ten_chinchilla import *
run_name = "wsd"
schedule = "wsd"
