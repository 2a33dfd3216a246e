"""default.py as a pipeline: the 16 blocks cut into one stage per GPU (4 x 4 blocks on 4 GPUs), 1F1B over 4 micro-batches."""
# The reference's pipeline-parallel variant of its baseline (docs/reference.md, "The reference experiments"):
# the same model, data, schedule and global batch as default.py. On 4 GPUs default.py's 4 processes each take 4
# rows of 4,096 tokens (65,536 a step); here each step's 16 rows go through the one pipeline as 4 micro-batches of
# 4 rows, so the schedule, its learning rates and the data order are default.py's. Each GPU holds a quarter of the
# blocks (and the embedding or lm_head) instead of the whole model.
#   torchrun --standalone --nproc_per_node=4 train.py configs/pp.py
from configs.default import *
run_name = "pp"
parallel = "pp"
pp_schedule = "1f1b"      # at 4 micro-batches, 1F1B holds at most 4 micro-batches' activations a stage, as GPipe
                          # does, but frees each one as soon as its backward is done
grad_accum = 4            # the pipeline's micro-batches: 4 x 4 rows = default.py's 16 rows a step on 4 GPUs
