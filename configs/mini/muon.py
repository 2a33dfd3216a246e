"""muon.py in miniature: Muon on the hidden matrices, AdamW on the rest."""
from configs.muon import *
from configs.mini import _scale
_scale.miniature(globals(), "1x")
