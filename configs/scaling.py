"""The CPU scaling grid (`make scaling`): Llama models of 5 sizes, each trained on 1, 2 and 4M bytes of the
embedded Shakespeare corpus, for a fit of L(N, D) = E + A/N^alpha + B/D^beta (`plot.py scaling`).

    python sweep.py configs/scaling.py --runs configs/scaling_sizes.txt total_tokens=1,2,4 --parallel 2

configs/scaling_sizes.txt lists the sizes (width, depth, heads of 16 channels, MLP ~2.75 x width): 25K to 0.80M
parameters outside the embeddings. Every run is a whole cosine schedule to lr / 10 over its own budget, as
Hoffmann et al.'s runs were (a run cut short of its schedule would overstate the loss of its tokens); all within
one pass over the 9.3M training bytes, so no byte is seen twice. One learning rate for every size: at this scale
the loss is flat over a wide band of rates (docs/experiments.md, "Scaling laws on the CPU").
"""
run_name = "scaling"
out_dir = "out/scaling"
data = "shakespeare"
tokenizer = "bytes"
model = "quickstart"        # Llama; dim, n_layers, n_heads and ffn_dim come from the sizes file
seq_len = 128
batch_size = 16             # 2,048 tokens a step
schedule = "cosine"         # to lr / 10 at the end of each run's own budget
lr = 3e-3                   # the miniatures' baseline rate (configs/mini/_scale.py)
warmup_tokens = 0.1         # 49 steps
compile = False             # ~50 s of compiling a run would take more than it saves at these sizes
eval_interval = 100_000     # evals before the first step and after the last only: the final loss is what is fitted
eval_iters = 32             # 65,536 bytes of the val split: a standard error well under the differences fitted
log_interval = 50
checkpoint_interval = 500   # a killed grid resumes (sweep.py skips finished runs)
