"""plot.py: the LR curve of a config, drawn without training."""
import pytest

import plot
from conftest import ROOT


def test_lr_plot_of_configs(tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert plot.main(["lr", str(ROOT / "configs/ten_chinchilla.py"), str(ROOT / "configs/wsd.py"), "total_tokens=100",
                      "annealing_tokens=10", "--world-size", "4", "--output", str(out)]) is None
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert f"wrote {out}" in capsys.readouterr().out


def test_lr_plot_bad_key_is_one_line(tmp_path, capsys):
    assert plot.main(["lr", str(ROOT / "configs/wsd.py"), "anealing_tokens=3", "--output", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == "error: unknown config key 'anealing_tokens' (did you mean 'annealing_tokens'?)\n"
