"""How a full config becomes its miniature (configs/mini/*.py): the idea kept, only the scale changed.

The full runs: llama-medium (113M parameters outside the embeddings), cl100k_32k, rows of 4,096 tokens,
65,536 tokens a step, the SmolLM corpus, 4 GPUs for weeks. A miniature: the same config, byte-level on the
embedded Shakespeare corpus (`make quickstart` prepares it; python prepare.py shakespeare --tokenizer bytes),
on 2 CPU cores in minutes. What changes, alike for every config of a group:
- the model's width and depth (the preset's kind stays: Llama, DeepOne, Canon), the row length and the rows a step;
- every token amount (total, warmup, cooldown, annealing) by one factor, so that each group keeps the
  reference's tokens per parameter: 1x Chinchilla = 20 tokens a parameter outside the embeddings, 10x = 200
  plus 20 of annealing (the 10x group trains a smaller model, so that it fits the time);
- every learning rate by one factor (tuned for the baseline at this size), so each config keeps its ratio to
  the baseline's (high_lr: 2x), and base_batch_tokens goes (the rate is given at the miniature's batch);
- the data: the SmolLM mix becomes the Shakespeare corpus; TinyStories, the simpler first source of the
  curricula, becomes the Python documentation that ships with Python (pydoc_data: plain technical English,
  prepared as `pydocs` by `make minis`);
- no torch.compile (~50 s a run on the CPU), evals and logs spaced for a few minutes' run.
The one-process baseline and the 2-stage pipeline (pp) train on the same 16 rows a step: pp's rows go as 4
micro-batches of 4, as configs/pp.py's 16 rows do on 4 GPUs.
"""
REFERENCE_1X_TOKENS = 2270  # millions: the reference's 1x Chinchilla budget, which its token amounts are relative to
ROWS = 16                   # rows a step, in every miniature (the reference's 16 rows of 4,096 tokens)

GROUPS = {
    # shape, row length, the group's 1x budget (millions of tokens: 20 a parameter), learning-rate factor (the
    # baseline's 1.5e-4 becomes 3e-3 and 4.5e-3)
    "1x": dict(model=dict(dim=64, n_layers=4, n_heads=4, ffn_dim=176), seq_len=128, budget=4.0, lr_factor=20.0),
    "10x": dict(model=dict(dim=32, n_layers=3, n_heads=2, ffn_dim=88), seq_len=64, budget=0.75, lr_factor=30.0),
}
DATA = {"smollm-fineweb-edu+smollm-cosmopedia": "shakespeare", "tinystories": "pydocs"}
TOKEN_KEYS = ("total_tokens", "warmup_tokens", "min_cooldown_tokens", "annealing_tokens")


def miniature(keys, group):
    """Rewrite a full config's keys in place (a config file passes its globals()) at the group's scale."""
    scale = GROUPS[group]
    keys.update(scale["model"])
    for key in TOKEN_KEYS:
        if key in keys:
            keys[key] = keys[key] * scale["budget"] / REFERENCE_1X_TOKENS
    keys["lr"] = keys["lr"] * scale["lr_factor"]
    keys["base_batch_tokens"] = None
    keys["seq_len"] = scale["seq_len"]
    keys["batch_size"] = ROWS // keys.get("grad_accum", 1)  # one process, or one pipeline of micro-batches
    keys["data"] = ", ".join(DATA.get(name.strip(), name.strip()) for name in keys["data"].split(","))
    if keys.get("eval_data"):
        keys["eval_data"] = DATA.get(keys["eval_data"], keys["eval_data"])
    keys["tokenizer"] = "bytes"
    keys["compile"] = False
    steps = keys["total_tokens"] * 1e6 / (ROWS * scale["seq_len"])
    keys["eval_interval"] = max(1, round(steps / 20))
    keys["eval_iters"] = 8
    keys["log_interval"] = max(1, round(steps / 100))
    keys["checkpoint_interval"] = max(1, round(steps / 4))
    keys["out_dir"] = "out/mini"
    keys["run_name"] = f"{group}_{keys['run_name']}"
