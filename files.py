"""Files that must never be lost: one atomic write, and checkpoints (their names, saving, finding, loading).

Every file the project writes (data, meta.json, config.json, checkpoints, figures, exports) goes through
write_atomic: a hidden temp file beside the target, flushed and fsynced, then renamed over it. A reader,
a kill -9 or a power cut sees the old file or the new one, never half of one; a failed write (a full
disk, the file-size limit, a read-only directory) removes its temp file, leaves the old file as it was and
is one line (write_error) naming the file and, when space ran out, the free space of its disk.

Checkpoints are ckpt_<step:08d>.pt (the newest that loads is resumed) and ckpt_best.pt (best eval loss).
A checkpoint is a dict holding at least "model" (a state dict) and "model_config" (ModelConfig as a dict);
the trainer adds the optimizer, step, mixture counters, rng state and config. Non-finite weights are never
saved, and a damaged newest checkpoint (unreadable, or with non-finite weights) falls back to the newest one
that loads.

A run directory's log is trimmed back to its checkpoint's step on resume, and a run directory is never started
over while it holds something that would be lost (check_fresh_start).

One writer at a time: a prepare or a training run holds its directory's lock (lock_directory) while it works there,
so a second one stops, naming the first, before it changes anything.
"""
import errno
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from config import UserError, one_line

# torch is imported inside the checkpoint functions, not here: prepare.py and plot.py write their files through
# this module and would otherwise spend a second importing torch at every start.


# ----------------------------------------------------------------------------- atomic writes

def temp_path(path):
    """Where path's content is written before the rename: beside it (one file system), hidden from globs such
    as ckpt_*.pt, and named by the process so that two processes never share one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path, write):
    """Call write(f) on a binary file open at a temp file beside path, sync it and rename it over path.
    On any failure the temp file is removed and path is left as it was; a failed write (write_failure) is raised
    as a UserError (write_error), anything else as it was raised."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a KeyboardInterrupt mid-write too
        tmp.unlink(missing_ok=True)
        failure = write_failure(e)
        if failure is None:
            raise
        raise write_error(path, failure) from None
    sync_directory(path.parent)


# a full disk, the file-size limit (ulimit -f: config.run_main turns its signal off), a disk quota
SPACE_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def write_failure(error):
    """The OSError that made a write fail: the error itself, or a full disk behind another error (torch.save
    reports a write that the disk refused as a RuntimeError of its zip writer, with the OSError as its context).
    None for anything else (a bug, a figure format that needs a missing tool, a KeyboardInterrupt)."""
    if isinstance(error, OSError):
        return error
    while isinstance(error, Exception):
        if isinstance(error, OSError) and error.errno in SPACE_ERRORS:
            return error
        error = error.__cause__ or error.__context__
    return None


def sync_directory(directory):
    """fsync a directory, so that a rename into it survives a power cut (POSIX only; a no-op elsewhere)."""
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path, text):
    write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def remove_stale_temps(directory):
    """Remove temp files that a killed process left in directory (call it holding the directory's lock: a live
    writer's temp files are not stale). Returns how many were removed."""
    stale = list(Path(directory).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_error(path, error, kept="the previous file is left as it was"):
    """A failed write (an OSError) as one line for the user: the file, the reason, the free space of its disk when
    space ran out, and what is kept (write_atomic leaves the previous file intact)."""
    reason = error.strerror or str(error)
    if error.errno in SPACE_ERRORS:
        try:
            reason += f" ({human_size(shutil.disk_usage(Path(path).parent).free)} free on its disk)"
        except OSError:  # the directory is gone as well: the reason alone
            pass
    return UserError(f"could not write {path}: {reason}; {kept}")


def human_size(n_bytes):
    """'1.23GB' (decimal units, as disks are sold and as df -H prints them)."""
    return tqdm.format_sizeof(n_bytes, suffix="B")


# ----------------------------------------------------------------------------- one writer at a time

LOCK_FILE = ".lock"  # in the directory; holds "<pid> <command>" of the process writing there
locks_held = {}  # resolved directory -> (open lock file descriptor, lock file path) of this process


def lock_directory(directory):
    """Make directory (and its parents) and hold its lock until unlock_directory or the end of this process.
    UserError, naming the holder (pid and command), when another live process holds it. The lock is flock(2)'s:
    the kernel drops it when its holder ends, so a process killed with kill -9 leaves a file but no lock, and the
    next writer takes it over. A second call of one process on one directory is a no-op (it holds the lock)."""
    import fcntl  # POSIX: imported here, so that this module still imports elsewhere
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key, path = str(directory.resolve()), directory / LOCK_FILE
    if key in locks_held:
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(fd)
            os.close(fd)
            raise UserError(f"{directory} is in use by {holder}: one process writes a directory at a time; wait "
                            f"for it to end, or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        # the holder we waited on may have removed the file (unlock_directory) between our open and our flock:
        # then we hold a lock on a file no one else can see, and must lock the one at path instead
        try:
            ours = os.stat(path)
            if (ours.st_dev, ours.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    command = shlex.join([Path(sys.executable).name, *sys.argv]).replace("\n", " ")
    os.ftruncate(fd, 0)  # written in place, not with write_atomic: a rename would put a new, unlocked file at path
    os.write(fd, f"{os.getpid()} {command}\n".encode())
    locks_held[key] = fd, path


def lock_holder(fd):
    """The holder of a lock file, as "process <pid> (<command>)" from what it wrote there just after locking it."""
    for _ in range(100):
        pid, _, command = os.pread(fd, 4096, 0).decode(errors="replace").strip().partition(" ")
        if pid:
            return f"process {pid} ({command})"
        time.sleep(0.01)
    return "another process (it has not written its pid)"


def unlock_directory(directory):
    """Let the next writer in: remove the lock file, still holding its lock (so that no one locks a removed file
    unnoticed), then release it. Nothing when this process does not hold directory's lock."""
    fd, path = locks_held.pop(str(Path(directory).resolve()), (None, None))
    if fd is None:
        return
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_NAME = re.compile(r"ckpt_(\d+)\.pt")
BEST_CHECKPOINT = "ckpt_best.pt"


def checkpoint_path(run_dir, step):
    return Path(run_dir) / f"ckpt_{step:08d}.pt"


def step_checkpoints(run_dir):
    """The step checkpoints of run_dir as a list of paths, oldest first."""
    matches = (CHECKPOINT_NAME.fullmatch(path.name) for path in Path(run_dir).glob("ckpt_*.pt"))
    return [Path(run_dir) / m.group(0) for m in sorted((m for m in matches if m), key=lambda m: int(m.group(1)))]


def non_finite_tensors(state_dict):
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    import torch
    return [name for name, tensor in state_dict.items()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def some_names(names, shown=1):
    """'a', or 'a and 2 more' (shown=1), 'a, b, c and 2 more' (shown=3): a list of names for one line."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def save_checkpoint(run_dir, state, keep, best=False):
    """Write ckpt_<step>.pt (or ckpt_best.pt) atomically, then drop all but the newest `keep` step checkpoints.
    Refuses (UserError) weights that are not finite, and a write that fails, leaving every earlier file whole."""
    import torch
    path = Path(run_dir) / BEST_CHECKPOINT if best else checkpoint_path(run_dir, state["step"])
    bad = non_finite_tensors(state["model"])
    if bad:
        older = step_checkpoints(run_dir)
        raise UserError(f"weights are not finite at step {state['step']} ({some_names(bad)}): not saved; the newest "
                        f"checkpoint is {older[-1] if older else 'none'}")
    write_atomic(path, lambda f: torch.save(state, f))
    if not best:
        for old in step_checkpoints(run_dir)[:-keep]:
            old.unlink()
    return path


def read_checkpoint(path, map_location="cpu"):
    """The checkpoint dict of one file; UserError, in one line, when the file is damaged (unreadable, or its weights
    are not finite: such weights are never saved, so the file was damaged since) or is not a checkpoint."""
    import torch
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, empty or foreign: a zip-reader or unpickling error, in many types
        # the first sentence: torch's zip-reader message goes on for four more about what may have happened
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason}") from None
    if not (isinstance(state, dict) and {"model", "model_config"} <= state.keys() and isinstance(state["model"], dict)):
        raise UserError(f"{path} is not a small-lm checkpoint (no model and model_config)")
    bad = non_finite_tensors(state["model"])
    if bad:
        raise UserError(f"checkpoint {path} is damaged: its weights are not finite ({some_names(bad)})")
    return state


def load_checkpoint(path, map_location="cpu", warn=None):
    """(path, checkpoint dict) of a checkpoint file, or of the newest step checkpoint of a run directory that
    loads. A damaged newer checkpoint is skipped with one line to warn (default: stderr). UserError when
    there is nothing to load."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    path = Path(path)
    if path.is_file():
        return path, read_checkpoint(path, map_location)
    if not path.is_dir():
        raise UserError(f"no such checkpoint file or run directory: {path}")
    candidates = step_checkpoints(path)
    if not candidates:
        raise UserError(f"no checkpoint (ckpt_*.pt) in run directory {path}")
    skipped = []  # "name: why", newest first
    for candidate in reversed(candidates):
        try:
            state = read_checkpoint(candidate, map_location)
        except UserError as e:
            skipped.append(f"{candidate.name} ({str(e).split(': ', 1)[-1]})")
            continue
        if skipped:
            warn(f"warning: using {candidate}, the newest that loads; skipped damaged {'; '.join(skipped)}")
        return candidate, state
    raise UserError(f"no checkpoint in {path} loads: {'; '.join(skipped)}")


# ----------------------------------------------------------------------------- a run's log; starting over

TEXT_KEYS = ("event",)  # the log keys whose values are text; every other value is a finite number (train.py logs)


def read_log(run_dir):
    """The records of run_dir/log.jsonl, in file order (blank lines skipped; [] for an empty log). Every value is
    a finite number, but text under TEXT_KEYS: anything else stops with one line naming the line and the key."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise UserError(f"no log.jsonl in {run_dir}")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # a complete file ends in "\n", so its last piece is ""
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline yet: a write torn by a kill (train.py drops it on resume)
                print(f"note: {path} ends in a torn line; left out", file=sys.stderr)
                break
            raise UserError(f"{path} line {number} is not valid JSON") from None
        if not isinstance(record, dict) or not is_number(record.get("step")):
            raise UserError(f"{path} line {number} is not a JSON object with a numeric step")
        for key, value in record.items():
            if key not in TEXT_KEYS and not (is_number(value) and math.isfinite(value)):
                raise UserError(f"{path} line {number}: {key} is {value!r}, not a finite number")
        records.append(record)
    return records


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)



def log_steps(log_path):
    """The step of every readable line of a log."""
    steps = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            pass
    return steps


def trim_log(log_path, step):
    """Drop log lines past the checkpoint's step, so curves never double back on resume, and a line torn by a kill
    mid-write. A fresh start (step 0) keeps nothing: its step-0 eval is written again."""
    if not log_path.exists():
        return

    def keep(line):
        try:
            return step > 0 and json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            return False

    kept = [line for line in log_path.read_text(errors="replace").splitlines() if keep(line)]
    write_text_atomic(log_path, "".join(line + "\n" for line in kept))


def check_fresh_start(run_dir):
    """A run directory without a step checkpoint is started over only when it holds nothing that would be lost:
    no ckpt_best.pt, no other checkpoint file, no log past step 0 (a kill before the first checkpoint leaves
    its step-0 eval, which the new run writes again)."""
    if not run_dir.is_dir():
        return
    found = sorted(p.name for p in run_dir.glob("ckpt*.pt"))
    log_path = run_dir / "log.jsonl"
    last_step = max(log_steps(log_path), default=0) if log_path.exists() else 0
    if last_step > 0:
        found.append(f"a log to step {last_step}")
    if found:
        hint = (f"; to go on from {BEST_CHECKPOINT}, copy it to ckpt_<its step, 8 digits>.pt"
                if BEST_CHECKPOINT in found else "")
        raise UserError(f"{run_dir} holds {', '.join(found)} but no step checkpoint (ckpt_<step>.pt) to resume from; "
                        f"nothing was changed: use another run_name, or move {run_dir} away to start over{hint}")


# ----------------------------------------------------------------------------- figures

# matplotlib is imported inside these two, as torch is in the checkpoint functions: only figures need it

def figure_format(output):
    """The format that the suffix of --output names (png, pdf, svg, ...), or UserError."""
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(output).suffix.lstrip(".").lower()
    if suffix not in formats:
        raise UserError(f"--output {output}: the suffix names no figure format (png, pdf, svg; all: "
                        f"{', '.join(sorted(formats))})")
    return suffix


def save_figure(fig, path):
    """Write fig through files.write_atomic (a temp file beside it, synced, then a rename); the suffix sets the
    format. A failed write (a full disk) is one line, and leaves no temp file and the previous figure as it was."""
    import matplotlib.pyplot as plt
    try:
        write_atomic(path, lambda f: fig.savefig(f, format=figure_format(path), dpi=110))
    except (ValueError, RuntimeError) as e:  # a format that needs a missing tool (pgf: LaTeX), say
        raise UserError(f"cannot draw {path}: {one_line(e)}") from None
    finally:
        plt.close(fig)
