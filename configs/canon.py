"""default.py with Canon-medium: Canon-A layers, NoPE and QK-norm at exactly llama-medium's shape."""
from configs.default import *
run_name = "canon"
model = "canon-medium"
