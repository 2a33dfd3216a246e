"""ten_chinchilla.py on a soft curriculum: TinyStories fading into the SmolLM mix as exp(-t / N_TinyStories).

Prepare the three sources first (python prepare.py tinystories, smollm-fineweb-edu, smollm-cosmopedia).
The eval split is SmolLM's alone, as in the reference; TinyStories' own eval loss is logged beside it.
The exp(-t / N) law and the reference's results: docs/reference.md, "Data" and "Results".
"""
from configs.ten_chinchilla import *
run_name = "tiny_x_small_lm"
data = "tinystories, smollm-fineweb-edu+smollm-cosmopedia"
mixture = "soft_sequential"
eval_data = "smollm-fineweb-edu+smollm-cosmopedia"
