"""configs/mini/: each miniature changes its full config's scale only, so it differs from its group's baseline
miniature in exactly the keys its full config changes."""
import dataclasses

import pytest
import torch

import train
from conftest import ROOT

GROUPS = {"default": ["high_lr", "bf16", "bf16_adafactor", "muon", "deepone", "canon", "pp"],
          "ten_chinchilla": ["long_cooldown", "wsd", "tiny_x_small_lm", "final"]}


def resolved(path):
    """Every key of a config as train.py resolves it, the model's fields included (vocabulary: bytes)."""
    cfg, model_overrides = train.load_config([str(path)])
    model_config = train.build_model_config(train.for_device(cfg, torch.device("cpu")), model_overrides, vocab_size=257)
    keys = dataclasses.asdict(cfg) | dataclasses.asdict(model_config)
    del keys["run_name"]
    return keys


def changed(config, baseline):
    return {key for key in config if config[key] != baseline[key]}


def test_every_full_config_has_its_miniature():
    full = {p.stem for p in (ROOT / "configs").glob("*.py")} - {"quickstart", "scaling"}  # CPU configs of their own
    minis = {p.stem for p in (ROOT / "configs" / "mini").glob("*.py") if not p.stem.startswith("_")}
    assert minis == full and len(minis) == 13


@pytest.mark.parametrize("baseline, name", [(b, n) for b, names in GROUPS.items() for n in names])
def test_a_miniature_changes_only_its_configs_knob(baseline, name):
    full = changed(resolved(ROOT / "configs" / f"{name}.py"), resolved(ROOT / "configs" / f"{baseline}.py"))
    mini_config = resolved(ROOT / "configs" / "mini" / f"{name}.py")
    mini_baseline = resolved(ROOT / "configs" / "mini" / f"{baseline}.py")
    mini = changed(mini_config, mini_baseline)
    if name == "pp":  # the baseline miniature runs on one process, so its 16 rows a step are one batch; pp's are
        # 4 micro-batches of 4, as configs/pp.py's are on 4 GPUs (whose default.py has 4 a GPU): the same rows
        assert mini - full == {"batch_size"}
        assert mini_config["batch_size"] * mini_config["grad_accum"] == mini_baseline["batch_size"] == 16
        mini -= {"batch_size"}
    assert mini == full and full, (name, sorted(mini), sorted(full))
    # a ratio the knob sets is kept: the learning rate's to the baseline's
    full_config, full_baseline = (resolved(ROOT / "configs" / f"{n}.py") for n in (name, baseline))
    assert mini_config["lr"] / mini_baseline["lr"] == pytest.approx(full_config["lr"] / full_baseline["lr"])


def test_the_groups_keep_the_references_tokens_per_parameter():
    """1x: 20 tokens a parameter outside the embeddings; 10x: 200 plus 20 of annealing."""
    import model
    for name, ratio in (("default", 20), ("ten_chinchilla", 220)):
        cfg, model_overrides = train.load_config([str(ROOT / "configs" / "mini" / f"{name}.py")])
        params = model.parameter_summary(train.build_model_config(train.for_device(cfg, torch.device("cpu")), model_overrides, 257))["non_embedding"]
        assert cfg.total_tokens * 1e6 / params == pytest.approx(ratio, rel=0.1)
