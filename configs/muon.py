"""default.py with Muon on the hidden matrices (AdamW on the rest), update RMS matched to AdamW, base lr 6e-4."""
from configs.default import *
run_name = "muon"
optimizer = "muon"
lr = 6e-4
