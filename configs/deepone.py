"""default.py with DeepOne-medium: DeepNet post-norm, ReLU-GLU, trainable ALiBi and no RoPE, at llama-medium's shape."""
from configs.default import *
run_name = "deepone"
model = "deepone-medium"
