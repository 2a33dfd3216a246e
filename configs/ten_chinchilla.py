"""default.py for 10x Chinchilla (22.7B tokens) plus a 1x (2.27B) rsqrt annealing at the end."""
from configs.default import *
run_name = "ten_chinchilla"
total_tokens = 22700 + 2270
annealing_tokens = 2270
