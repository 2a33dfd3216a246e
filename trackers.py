"""Where a run's logged numbers go besides log.jsonl, its record of truth: TensorBoard and Weights & Biases, chosen by
the config key log_to ("tensorboard,wandb"). Only rank 0 opens them (runs.start_run); Run.log sends every record
through Trackers.log, the end-of-run samples go through Trackers.samples, and train.py closes them however the run
ends.

- TensorBoard: event files in <run dir>/tensorboard, when the tensorboard package happens to be installed (else
  nothing: it is never required).
- Weights & Biases: an optional install (requirements-wandb.txt). The run's resolved config once, every float the
  log holds at its step, and the samples as a table. Its local files go in <run dir>/wandb; the run's W&B id is kept
  in <run dir>/wandb_id.txt, so that a resumed run goes on in the same W&B run. WANDB_MODE=offline logs without an
  account or a network (`wandb sync <run dir>/wandb/offline-run-*` uploads it later).
"""
import importlib.util
import secrets

import files
from config import UserError, one_line

TRACKERS = ("tensorboard", "wandb")


def names_of(log_to):
    """The trackers a log_to value names (comma-separated, "" for none)."""
    return [name.strip() for name in log_to.split(",") if name.strip()]


def tracker_names(value):
    """What is wrong with a log_to value (comma-separated TRACKERS, "" for none), as text; "" when nothing is. A
    tracker that is asked for but not installed is wrong here, before anything trains."""
    names = names_of(value)
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        return f"names {', '.join(map(repr, unknown))}, not one of {', '.join(TRACKERS)} (comma-separated)"
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        return "asks for wandb, which is not installed: pip install -r requirements-wandb.txt"
    return ""


def project_name(value):
    """What is wrong with a W&B project name, as text; "" when nothing is."""
    forbidden = "/\\#?%:"  # W&B refuses these in a project's name
    if value and not set(value) & set(forbidden):
        return ""
    return f"must be a W&B project name (not empty, none of {forbidden})"


class Trackers:
    """The trackers a run's rank 0 logs to (none on the other ranks: Trackers() logs nowhere)."""

    def __init__(self, tensorboard=None, wandb_run=None):
        self.tensorboard, self.wandb_run = tensorboard, wandb_run

    def log(self, record):
        """A log.jsonl record: its float values (not the wall-clock "time") at its step."""
        scalars = {key: value for key, value in record.items() if isinstance(value, float) and key != "time"}
        if self.tensorboard:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, record["step"])
        if self.wandb_run and scalars:
            # W&B keeps one row a step and drops a step lower than one it has (a resume goes back to its checkpoint:
            # the steps logged after it, before the stop, stay as first logged)
            self.wandb_run.log(scalars, step=record["step"])

    def samples(self, step, text):
        if self.wandb_run:
            import wandb
            self.wandb_run.log({"samples": wandb.Table(columns=["step", "samples"], data=[[step, text]])}, step=step)

    def close(self, status):
        """status: the run's exit status, 1 for an error; W&B shows a run whose status is not 0 as failed (without it,
        a run closed while its error is on its way would show as finished)."""
        if self.tensorboard:
            self.tensorboard.close()
        if self.wandb_run:
            self.wandb_run.finish(exit_code=status)


def start(log_to, run_dir, run_name, project, config):
    """The Trackers of log_to for a run (rank 0 only), config being what config.json holds."""
    names = names_of(log_to)
    wandb = wandb_run(run_dir, run_name, project, config) if "wandb" in names else None  # first: it may fail to start
    return Trackers(tensorboard_writer(run_dir) if "tensorboard" in names else None, wandb)


def tensorboard_writer(run_dir):
    """TensorBoard event files in <run dir>/tensorboard when the tensorboard package is installed; never required."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def wandb_run(run_dir, run_name, project, config):
    """A W&B run for this run directory: the same one again when the run resumes (its id from wandb_id.txt)."""
    import wandb
    id_path = run_dir / "wandb_id.txt"
    if not id_path.is_file():  # written before the run starts, so that a run killed at once keeps its id
        files.write_text_atomic(id_path, secrets.token_hex(8) + "\n")
    try:
        return wandb.init(project=project, name=run_name, id=id_path.read_text().strip(), resume="allow",
                          dir=str(run_dir), config=config)
    except Exception as e:  # no account or no network online, a bad project name: wandb's own errors
        raise UserError(f"wandb did not start: {one_line(e)} (WANDB_MODE=offline logs without an account)") from None
