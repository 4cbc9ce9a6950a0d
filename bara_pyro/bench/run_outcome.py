"""How a benchmark job ended, in words: finished, stopped with its progress kept, or failed with its log.

A job is a ``bara-pyro train`` (or OOD evaluation) subprocess whose output goes to a log file.  When the
benchmark is stopped (Ctrl-C, SIGTERM from a time limit), its runs stop at their next step or prediction
batch, write a checkpoint and exit with :data:`INTERRUPT_STATUS`; re-running the benchmark command
resumes them.  Such a run is *stopped*, not failed.  Any other non-zero exit is a failure, reported with
the last lines of its log.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

__all__ = ["INTERRUPT_STATUS", "RunStopped", "raise_for_exit", "stop_message", "outcome_line"]

INTERRUPT_STATUS = 130  # what ``bara-pyro`` returns after a KeyboardInterrupt (SIGINT/SIGTERM)
RESUME_HINT = "run the same command to resume"
TAIL_LINES = 8

_TRAIN_STOP = re.compile(r"interrupted at step (\d+); checkpoint saved")
_TRAIN_ABORT = re.compile(r"aborted at step (\d+); resume from the last checkpoint")
_PREDICT_STOP = re.compile(r"prediction interrupted after (\d+) of (\d+) examples")


class RunStopped(RuntimeError):
    """The job was stopped by a signal and kept what it had done; the message says how far it got."""


def stop_message(log_text: str) -> str:
    """What a stopped job kept, read from its log (the output of the segment that was stopped)."""
    train = _TRAIN_STOP.findall(log_text)
    predict = _PREDICT_STOP.findall(log_text)
    if predict:
        done, total = predict[-1]
        return f"stopped while evaluating, after {done} of {total} examples (kept); {RESUME_HINT}"
    if train:
        return f"stopped at step {train[-1]} (checkpoint kept); {RESUME_HINT}"
    if _TRAIN_ABORT.findall(log_text):
        return f"stopped before its next checkpoint (the last one is kept); {RESUME_HINT}"
    return f"stopped before it saved any progress; {RESUME_HINT}"


def _log_tail(log_text: str, lines: int = TAIL_LINES) -> list[str]:
    return [line for line in log_text.strip().splitlines() if line.strip()][-lines:]


def raise_for_exit(returncode: int, log_path: Path, offset: int = 0, stopping: bool = False) -> None:
    """Raise for a job that exited with ``returncode`` (0 returns).

    :param offset: where this job's output starts in ``log_path`` (earlier segments are above it).
    :param stopping: the benchmark is stopping its jobs (a job it had to kill is stopped, not failed).
    :raises RunStopped: the job exited as interrupted (:data:`INTERRUPT_STATUS`, SIGINT, SIGTERM; SIGKILL while
        ``stopping``).
    :raises RuntimeError: any other failure; the message ends with the last lines of the log.
    """
    if returncode == 0:
        return
    try:
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            text = f.read()
    except OSError:
        text = ""
    interrupted = (returncode == INTERRUPT_STATUS or returncode in (-signal.SIGINT, -signal.SIGTERM)
                   or (stopping and returncode == -signal.SIGKILL))
    if interrupted:
        raise RunStopped(stop_message(text))
    status = (f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0 and
              -returncode in signal.valid_signals() else f"exit status {returncode}")
    tail = _log_tail(text)
    detail = f"; last lines of {log_path}:\n" + "\n".join(tail) if tail else f"; {log_path} is empty"
    raise RuntimeError(status + detail)


def outcome_line(index: int, total: int, name: str, result: dict) -> str:
    """The progress line for one finished job; a failure shows its whole message, indented."""
    head = f"[{index}/{total}] {name}"
    seconds = f"({result['time_s']:.0f} s)"
    if result["status"] == "ok":
        return f"{head} ok {seconds}"
    if result["status"] == "stopped":
        return f"{head} {result['error']} {seconds}"
    first, *rest = (result["error"] or "").splitlines() or [""]
    return "\n".join([f"{head} failed {seconds}: {first}", *(f"    {line}" for line in rest)])
