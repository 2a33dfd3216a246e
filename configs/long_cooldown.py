"""ten_chinchilla.py with the Infinite-LR cosine cooldown over 70% of the budget instead of 30%."""
from configs.ten_chinchilla import *
run_name = "long_cooldown"
cooldown_p = 0.7
