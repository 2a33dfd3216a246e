"""Plots of runs and schedules.

    python plot.py lr configs/ten_chinchilla.py configs/wsd.py [key=value ...] [--world-size 4] [--output lr.png]

`lr` draws the learning rate of each config over its whole budget, without training: the
schedule is a pure function of the step (sched.py), laid out exactly as train.py would lay it
out for --world-size processes. key=value overrides apply to every config.
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt

import sched
import train


def plot_lr(argv):
    parser = argparse.ArgumentParser(prog="plot.py lr", description="draw the LR schedule of configs, without training")
    parser.add_argument("configs", nargs="+", help="config files (.py), then key=value overrides for all of them")
    parser.add_argument("--world-size", type=int, default=1, help="processes the run would use (sets tokens per step)")
    parser.add_argument("--output", default="lr.png")
    args = parser.parse_args(argv)
    config_files = [a for a in args.configs if "=" not in a]
    overrides = [a for a in args.configs if "=" in a]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for path in config_files:
        cfg, _ = train.load_config([path, *overrides])
        schedule = train.make_schedule(cfg, args.world_size)
        tokens_per_step = sched.tokens_per_step(cfg.seq_len, cfg.batch_size, cfg.grad_accum, args.world_size)
        steps = range(0, schedule.end_step + 1, max(schedule.end_step // 4000, 1))  # ~4000 points are plenty
        ax.plot([n * tokens_per_step / 1e9 for n in steps], [sched.lr_at(n, schedule) for n in steps],
                label=f"{Path(path).stem} ({cfg.schedule}, {schedule.end_step:,} steps)")
    ax.set_xlabel("tokens (billions)")
    ax.set_ylabel("learning rate")
    ax.set_title(f"learning-rate schedules, {args.world_size} process(es)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


def main(argv):
    if argv[:1] == ["lr"]:
        try:
            return plot_lr(argv[1:])
        except train.UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
