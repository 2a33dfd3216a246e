"""Run control: telling a running job to save, stop, abort or start annealing, from another shell or by signal.

    python train.py control out/RUN save|stop|abort|anneal

send() leaves the command in out/RUN/control (atomically: the trainer never reads half a command); rank 0 of the
job reads and consumes it after every step (read), and train.py has every rank act on it together.

SIGTERM and SIGINT (preemption, Ctrl-C) act like "stop" (catch_stop_signals): the run saves and exits 0. Inside an
interruptible() section (a sample being generated) the signal also abandons that work at once, raising Stopped; the
loop checks stop_requested() between eval batches. A second signal stops at once (KeyboardInterrupt), unless it
comes within REPEAT_SECONDS of the first: that is the same request delivered twice (a terminal's Ctrl-C reaches
every process of the job, and a launcher such as torchrun passes it on to its workers as well).
"""
import signal
import sys
import time
from contextlib import contextmanager
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


REPEAT_SECONDS = 1.0  # a second signal sooner than this after the first is the first one, delivered twice


class Stopped(Exception):
    """A stop signal came during work that it abandons (an eval, a sample); nothing that work changes is kept."""


# One set of signal handlers per process, so their state is the module's: the first signal's time (None: none yet)
# and whether the code now running may be abandoned.
state = {"received_at": None, "interruptible": False}


def catch_stop_signals():
    """From now on SIGTERM and SIGINT ask the run to save and stop (stop_requested); a second one stops at once."""
    state.update(received_at=None, interruptible=False)

    def on_signal(signum, frame):
        now = time.monotonic()
        if state["received_at"] is not None:
            if now - state["received_at"] < REPEAT_SECONDS:
                return
            raise KeyboardInterrupt
        state["received_at"] = now
        print(f"received {signal.Signals(signum).name}: saving and stopping (a second one stops at once)",
              file=sys.stderr, flush=True)
        if state["interruptible"]:
            raise Stopped

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


def stop_requested():
    return state["received_at"] is not None


@contextmanager
def interruptible():
    """A section that a stop signal abandons at once (raising Stopped), and that is not started after one. Only for
    work that changes nothing and runs no collective that other processes wait on: a sample on rank 0."""
    if stop_requested():
        raise Stopped
    state["interruptible"] = True
    try:
        yield
    finally:
        state["interruptible"] = False
