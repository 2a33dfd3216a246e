"""The model card (README.md) of an export: what the model is, what it was trained on, how well it does, how it
was made and how to load it, written from what the checkpoint and its run directory record. export.py writes it
beside the weights (and loss.png, the curve it links); the Hub shows it as the model's page.

Every fact is optional but the model's shape: a bare checkpoint without its run directory has no log, so its card
has no eval loss and no curve, and says so; a checkpoint imported from another Llama records no training at all.
"""

import json
import shlex
from pathlib import Path

from config import parse_value
from model import BACKEND_FIELDS, PRESETS, ModelConfig, human, parameter_summary

# config.json keys left out of the card: paths on the machine that trained, of no use to a reader (and not theirs
# to see); vocab_size is the data's, not a choice
LEFT_OUT = ("out_dir", "data_dir", "vocab_size", "world_size")
SAMPLE_SETTINGS = "do_sample=True, temperature=0.8, top_k=200"  # sample.py's defaults, in transformers' words


def model_card(config, checkpoint, log, train_defaults, checkpoint_name, repo=None, figure=None):
    """README.md's text. config: the ModelConfig; checkpoint: its dict (step, tokens, tokenizer and the run's
    config, where recorded); log: the run's log.jsonl records (None: no log); train_defaults: train.py's
    {key: default}; repo: the Hub repo id the folder goes to (None: a local folder); figure: the loss curve's file
    name in the folder (None: not drawn)."""
    run = checkpoint.get("config") or {}
    name = run.get("run_name") or Path(checkpoint_name).parent.name or Path(checkpoint_name).stem  # an import's folder
    sections = [front_matter(run), f"# {name}\n\n{summary(config, checkpoint, run)}",
                model_section(config, checkpoint.get("tokenizer"), run.get("seq_len")),
                data_section(checkpoint, run), eval_section(checkpoint, log, figure),
                training_section(checkpoint, run, train_defaults, checkpoint_name),
                usage_section(repo, None if "tokenizer_json" not in checkpoint else end_of_text(checkpoint))]
    return "\n\n".join(sections) + "\n"


def front_matter(run):
    """The YAML block the Hub reads: which library loads the model, its task, and the Hub datasets it saw. No
    license: the weights inherit the data's terms, which only the user knows."""
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- llama", "- small-lm"]
    datasets = sorted({repo for _, repo in data_sources(run) if repo})
    if datasets:
        lines += ["datasets:", *(f"- {repo}" for repo in datasets)]
    return "\n".join(lines + ["---"])


def summary(config, checkpoint, run):
    size = human(parameter_summary(config)["total"])
    if not run.get("run_name"):  # an --import: no training recorded
        return f"A {size}-parameter Llama language model, exported by small-lm."
    what = f"A {size}-parameter Llama language model trained from scratch with small-lm"
    if checkpoint.get("tokens"):
        what += f" on {checkpoint['tokens']:,} tokens" + (f" of `{run['data']}`" if run.get("data") else "")
    elif run.get("data"):
        what += f" on `{run['data']}`"
    return what + "."


def model_section(config, tokenizer, seq_len):
    counts = parameter_summary(config)
    kv = ("multi-head attention" if config.kv_heads == config.n_heads
          else f"grouped-query attention, {config.n_heads // config.kv_heads} query heads a key/value head")
    rows = [("Architecture", "Llama (`LlamaForCausalLM`): pre-norm RMSNorm, RoPE, SwiGLU, no biases"),
            ("Layers", config.n_layers), ("Width", config.dim),
            ("Attention heads", f"{config.n_heads} ({config.head_dim} wide)"),
            ("Key/value heads", f"{config.kv_heads} ({kv})"), ("Feed-forward width", config.ffn_dim),
            ("Vocabulary", f"{config.vocab_size:,}" + (f" (tokenizer `{tokenizer}`)" if tokenizer else "")),
            ("Context", f"{seq_len:,} tokens" if seq_len else "not recorded"),
            ("RoPE theta", f"{config.rope_theta:g}" + (f", scaled `{config.rope_scaling}`" if config.rope_scaling
                                                        else "")),
            ("Embeddings", "input and output tied" if config.tie_embeddings else "input and output separate"),
            ("Parameters", f"{counts['total']:,} ({human(counts['total'])})"),
            ("Parameters outside the embeddings", f"{counts['non_embedding']:,} ({human(counts['non_embedding'])})")]
    return "## Model\n\n" + table(("", "this model"), rows)


def data_section(checkpoint, run):
    if not run.get("data"):
        return "## Data\n\nThe checkpoint records no training data."
    listed = [f"`{name}`" + (f" ([{repo}](https://huggingface.co/datasets/{repo}))" if repo else "")
              for name, repo in data_sources(run)]
    lines = [f"- Trained on: {', '.join(listed)}" + (f" (mixture `{run['mixture']}`)" if len(listed) > 1 else "")]
    if run.get("eval_data"):
        lines.append(f"- Evaluated on the held-out split of: `{run['eval_data']}`")
    if checkpoint.get("tokens"):
        budget = f" of a {run['total_tokens']:g}M-token schedule" if run.get("total_tokens") else ""
        step = f"step {checkpoint['step']:,}" if checkpoint.get("step") is not None else "step not recorded"
        lines.append(f"- Tokens seen: {checkpoint['tokens']:,} ({step}{budget})")
    if checkpoint.get("tokenizer"):
        own = " (the run's own tokenizer.json, named by its sha256)" if "tokenizer_json" in checkpoint else ""
        lines.append(f"- Tokenizer: `{checkpoint['tokenizer']}`{own}; `{end_of_text(checkpoint)}` opens every "
                     f"document and ends generation (it is BOS, EOS and the padding token)")
    return "## Data\n\n" + "\n".join(lines)


def end_of_text(checkpoint):
    """The end-of-text token's text: ours, or the one of the run's own tokenizer.json (its added token of that id)."""
    if "tokenizer_json" not in checkpoint:
        return "<|endoftext|>"
    added = json.loads(checkpoint["tokenizer_json"]).get("added_tokens", [])
    return next((t["content"] for t in added if t["id"] == checkpoint.get("eot_id")), "end-of-text")


def data_sources(run):
    """[(data name, its Hub dataset repo or None)] of the run's `data`, the repo read from the data's meta.json where
    that is still on this machine and was prepared from the Hub."""
    names = [name for part in (run.get("data") or "").split(",") for name in part.split("+") if name]
    found = []
    for name in names:
        try:
            repo = json.loads((Path(run.get("data_dir") or "data") / name / "meta.json").read_text()).get("repo")
        except (OSError, ValueError, AttributeError):
            repo = None
        found.append((name, repo if isinstance(repo, str) else None))
    return found


def eval_section(checkpoint, log, figure):
    if log is None:
        return ("## Evaluation\n\nNo readable training log (log.jsonl) was beside the checkpoint, so there is no "
                "eval loss or loss curve here.")
    step = checkpoint.get("step")
    record = eval_record(log, step)
    if record is None:
        return f"## Evaluation\n\nThe training log holds no eval at or before step {step}."
    at = f"step {record['step']:,}" + (f" ({record['tokens']:,} tokens)" if "tokens" in record else "")
    if step is not None and record["step"] != step:
        at += f", the last eval before this checkpoint's step {step:,}"
    rows = [("eval loss (nats/token)", f"{record['eval_loss']:.4f}")]
    if "eval_bpb" in record:
        rows.append(("eval bits/byte", f"{record['eval_bpb']:.4f}"))
    rows += [(f"eval loss, `{key.split('/', 1)[1]}`", f"{value:.4f}")
             for key, value in record.items() if key.startswith("eval_loss/")]
    text = (f"## Evaluation\n\nOn the held-out split (documents never trained on), at {at}:\n\n"
            + table(("metric", "value"), rows))
    if figure:
        text += f"\n\n![train and eval loss against tokens seen]({figure})"
    return text


def eval_record(log, step):
    """The log's eval at the checkpoint's step (the last one, where a resume evaluated it again), else the last one
    before it: a checkpoint saved between evals is reported with the eval that preceded it."""
    evals = [r for r in log if "eval_loss" in r and (step is None or r["step"] <= step)]
    return evals[-1] if evals else None


def training_section(checkpoint, run, train_defaults, checkpoint_name):
    made = f"Exported by small-lm's `export.py` from `{Path(checkpoint_name).name}`"
    if checkpoint.get("step") is not None:
        made += f" (step {checkpoint['step']:,})"
    if not run.get("run_name"):  # an import records only its context: it was not trained here
        return f"## Training\n\n{made}; the checkpoint records no training run."
    changed = changed_keys(run, train_defaults)
    if run.get("init_from"):  # this machine's path left out: the folder or run/checkpoint it names
        changed["init_from"] = weights_name(run["init_from"])
        made += (f". The run started from the weights of `{changed['init_from']}` (init_from), with a fresh "
                 "optimizer and schedule")
    command = ["python", "train.py"]
    if run.get("world_size", 1) > 1:
        command.append(f"--nproc-per-node={run['world_size']}")
    command += [f"{key}={value_text(value)}" for key, value in changed.items()]
    return (f"## Training\n\n{made}. The run's settings that differ from train.py's defaults and from the shape of "
            f"its model preset (`auto` keys as they resolved), as the command that trains it again with small-lm "
            f"from data prepared under the same name:\n\n```\n{wrapped(command)}\n```")


def weights_name(path):
    """init_from's weights without this machine's folders: a checkpoint as <run>/<file>, a folder by its name."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.suffix == ".pt" else path.name


def changed_keys(run, train_defaults):
    """{key: value} of a run's config (train.py's keys, then the model's) that differ from train.py's defaults and
    from its model preset. "auto" keys are recorded as they resolved (device=cpu, dtype=fp32): what ran."""
    preset = vars(PRESETS.get(run.get("model"), ModelConfig()))
    defaults = {**train_defaults, **{k: v for k, v in preset.items() if k not in BACKEND_FIELDS}}
    return {key: value for key, value in run.items()
            if key in defaults and key not in LEFT_OUT and as_json(value) != as_json(defaults[key])}


def as_json(value):
    return json.loads(json.dumps(value))  # a default's tuple equals the list config.json holds


def wrapped(words, width=100):
    """A shell command of words (quoted where needed), continued with backslashes so that no line passes width."""
    lines = [""]
    for word in map(shlex.quote, words):
        if lines[-1] and len(lines[-1]) + len(word) + 3 > width:
            lines.append("   ")
        lines[-1] += (" " if lines[-1] else "") + word
    return " \\\n".join(lines)


def value_text(value):
    """value as train.py's key=value reads it back (config.parse_value): text bare where it stays text."""
    if isinstance(value, str) and parse_value(value) == value:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return json.dumps(list(value), ensure_ascii=False)  # double quotes: no quotes within the shell's
    return repr(value)


def usage_section(repo, own_eot=None):
    """own_eot: the end-of-text of the run's own tokenizer.json, which is exported as it is, adding nothing."""
    where = repo or "path/to/this/folder"
    first = ("the tokenizer puts `<|endoftext|>` first, as every training document starts" if own_eot is None else
             f"every training document starts with `{own_eot}`, which this tokenizer does not add: put it before a "
             "prompt for the text the model saw")
    return (f"## Use\n\nWith transformers ({first}):\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f'model = AutoModelForCausalLM.from_pretrained("{where}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")\n'
            'inputs = tokenizer(["Once upon a time", "The king"], return_tensors="pt", padding=True)\n'
            "out = model.generate(**inputs, max_new_tokens=100, do_sample=False)  # greedy; as sample.py: "
            f"{SAMPLE_SETTINGS}\n"
            "print(tokenizer.batch_decode(out, skip_special_tokens=True))\n```")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])
