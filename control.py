"""Run control: telling a running job to save, stop, abort or start annealing, from another shell or by signal.

    python train.py control out/RUN save|stop|abort|anneal

send() leaves the command in out/RUN/control (atomically: the trainer never reads half a command); rank 0 of the
job reads and consumes it after every step (read), and train.py has every rank act on it together. SIGTERM and
SIGINT (preemption, Ctrl-C) act like "stop"; a second one stops at once.
"""
import signal
import sys
from pathlib import Path

import files
from config import UserError

COMMANDS = ("save", "stop", "abort", "anneal")  # save and go on; save and exit; exit unsaved; start annealing


def send(run_dir, command):
    if command not in COMMANDS:
        raise UserError(f"unknown control command {command!r}; known: {', '.join(COMMANDS)}")
    if not (Path(run_dir) / "config.json").exists():
        raise UserError(f"{run_dir} is not a run directory (no config.json)")
    files.write_text_atomic(Path(run_dir) / "control", command + "\n")  # the trainer never reads half a command
    print(f"sent {command!r} to {run_dir}: the run acts on it after its current step")


def read(run_dir):
    """The pending command, consumed; "" when there is none."""
    path = run_dir / "control"
    try:
        command = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    if command not in COMMANDS:
        print(f"ignored unknown control command {command!r}", file=sys.stderr)
        return ""
    return command


def catch_stop_signals():
    """SIGTERM and SIGINT set a flag that the loop turns into "save and stop"; a second one stops at once."""
    received = [False]

    def on_signal(signum, frame):
        if received[0]:
            raise KeyboardInterrupt
        received[0] = True
        print(f"received {signal.Signals(signum).name}: saving after this step", file=sys.stderr)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return received


