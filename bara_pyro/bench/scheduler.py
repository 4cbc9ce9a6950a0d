"""Running a benchmark's jobs: one after another in this process, or as Ray tasks on this machine or a cluster.

A job is ``(name, in_process_fn, command, log_path)``: ``in_process_fn()`` runs it here; ``command`` (a list, or
a picklable zero-argument callable returning one, evaluated when the job starts) runs it as a subprocess
whose output goes to ``log_path``.

``workers == 1`` and no cluster address: the plain local path, each job in this process in turn (no Ray, no
subprocess: the quickest start and a traceback in the log on failure).

Otherwise every job is a Ray task (``ray.init()`` starts a local Ray instance, or ``address`` joins a running
cluster) that asks for ``gpu_share`` of a GPU (``num_gpus``; Ray gives it ``CUDA_VISIBLE_DEVICES``) and one CPU,
and runs the job's command as a subprocess.  At most ``workers`` jobs are in flight; they are submitted in the
given order, each after its ``before_job`` hook ran here.  A job that exits non-zero is reported as failed and
the others go on; a task whose worker or machine dies is retried (``max_retries``), and a training job's
command resumes from its checkpoint then.  Ctrl-C or SIGTERM stops the tasks (through a flag actor that each
polls): each sends SIGTERM to its subprocess, which checkpoints at its next step and exits, and the driver waits
for them.

On a cluster, every node needs this package installed and the benchmark's output folder on a shared
filesystem (the tasks read and write the run directories).

Without Ray installed (and no cluster address), ``workers > 1`` runs the same commands as local subprocesses,
at most ``workers`` at once, each given the visible GPU that the fewest running jobs share
(``CUDA_VISIBLE_DEVICES``); Ctrl-C stops them as above.  On either path a job that fails because CUDA ran out
of memory is queued again (at most :data:`MAX_OOM_RETRIES` times; it resumes from its checkpoint), and from
then on fewer jobs run at once than were running when it failed.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from .run_outcome import RunStopped, outcome_line, raise_for_exit, stop_message

__all__ = ["execute", "visible_gpus", "default_gpu_share", "run_logged"]

Job = tuple[str, Callable[[], None], "list[str] | Callable[[], list[str]] | None", Path]

MAX_RETRIES = 2  # re-runs of a task whose worker process or node died (not of a job that failed)
MAX_OOM_RETRIES = 2  # re-runs of a job that failed because CUDA ran out of memory
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError")
STOP_TIMEOUT_S = 120  # how long a cancelled job's subprocess may take to checkpoint before it is killed
OBJECT_STORE_BYTES = 80 * 1024**2  # the jobs pass nothing through Ray's object store (Ray's minimum is 75 MiB)


def visible_gpus() -> list[int] | None:
    """``[0, ..., n-1]`` when this process sees n >= 1 CUDA devices, else None."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA
        return None
    return list(range(n)) if n >= 1 else None


def default_gpu_share(workers: int, num_gpus: float) -> float:
    """The GPU share of one job when ``workers`` jobs run at once on ``num_gpus`` GPUs (0 without GPUs; at most 1):
    ``num_gpus / workers``, so that they spread evenly."""
    if num_gpus <= 0:
        return 0.0
    return min(1.0, num_gpus / workers)


def run_logged(cmd: list[str], log_path: Path, env: dict | None = None,
               stop_requested: Callable[[], bool] | None = None) -> None:
    """Run ``cmd`` with its output appended to ``log_path``; a non-zero exit raises ``RuntimeError`` with the log's
    tail, or :class:`~bara_pyro.bench.run_outcome.RunStopped` when a signal stopped the run and it kept its
    progress.  When ``stop_requested()`` turns true (polled every second) or on ``KeyboardInterrupt``, it sends
    SIGTERM to the subprocess, waits for it to checkpoint and exit (killed after ``STOP_TIMEOUT_S``) and raises
    ``KeyboardInterrupt``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if stop_requested is not None and stop_requested():
                        raise KeyboardInterrupt("stop requested") from None
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    raise_for_exit(rc, log_path, offset)


def _job_env(workers: int) -> dict[str, str]:
    """Environment additions of a job's subprocess: this package importable, a fair share of CPU threads."""
    package_root = str(Path(__file__).resolve().parents[2])
    return {"PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers))),
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}


def _run_task(command, log_path: Path, env_updates: dict[str, str], stop_flag) -> None:
    """The body of one Ray task (in a Ray worker process); ``stop_flag``: the driver's :class:`_StopFlag` actor."""
    import ray

    cmd = command() if callable(command) else list(command)
    run_logged(cmd, log_path, {**os.environ, **env_updates}, stop_requested=lambda: ray.get(stop_flag.get.remote()))


class _StopFlag:
    """Set by the driver when it is interrupted; every running task polls it and stops its subprocess (a Ray actor,
    so that tasks on other machines see it too)."""

    def __init__(self):
        self.value = False

    def set(self) -> None:
        self.value = True

    def get(self) -> bool:
        return self.value


def execute(jobs: list[Job], workers: int, log: Callable[[str], None] = print, gpus: list[int] | None = None,
            before_job: dict[str, Callable[[], None]] | None = None, address: str | None = None,
            gpu_share: float | None = None, after: dict[str, set[str]] | None = None) -> dict[str, dict]:
    """Run the jobs; returns ``{name: {status: 'ok' | 'failed' | 'stopped', error, time_s}}`` (see the module
    docstring; 'stopped': a signal stopped the run, which kept its progress).

    :param gpus: GPU indices a local Ray instance may use (default: every visible one); ignored on a cluster.
    :param gpu_share: GPUs per job (default :func:`default_gpu_share` over the GPUs Ray has).
    :param after: ``{name: names}``: a job starts only once those of ``names`` that are jobs here have ended (each
        must come before it in ``jobs``); meanwhile later jobs may start.
    """
    names_here = {job[0] for job in jobs}
    after = {name: set(names) & names_here for name, names in (after or {}).items()}
    if workers == 1 and address is None:
        return _execute_here(jobs, log, before_job or {})  # in order: each job's predecessors have ended
    if address is None and not _ray_installed():
        log(f"Ray is not installed: up to {workers} runs at once as local subprocesses")
        return _execute_local(jobs, workers, log, visible_gpus() if gpus is None else gpus, before_job or {}, after)
    return _execute_ray(jobs, workers, log, gpus, before_job or {}, address, gpu_share, after)


def _ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class _Dispatch:
    """The queue of a run of jobs: which job starts next (its ``before_job`` hook run here; a failing hook reports the
    job as failed), at most ``limit`` at once (``workers``, lowered to fewer than were running when a job ran out of
    CUDA memory; such a job is queued again, at most ``MAX_OOM_RETRIES`` times), and the outcome of each."""

    def __init__(self, jobs: list[Job], workers: int, before_job: dict, log, after: dict | None = None):
        self.pending, self.limit, self.before_job, self.log = list(jobs), workers, before_job, log
        self.total, self.retries, self.outcome, self.after = len(jobs), {}, {}, after or {}

    def next_job(self, running: int) -> tuple[Job, float] | None:
        """The next job to start while fewer than ``limit`` run (``running`` do): the first pending one whose
        ``after`` jobs have all ended, its hook run, and its start time (before the hook); None: none now."""
        while running < self.limit:
            ready = next((i for i, job in enumerate(self.pending)
                          if self.after.get(job[0], set()) <= self.outcome.keys()), None)
            if ready is None and (running or not self.pending):
                return None
            job, t0 = self.pending.pop(ready or 0), time.perf_counter()  # nothing runs: never wait forever
            try:
                if job[0] in self.before_job:
                    self.before_job[job[0]]()
            except Exception as exc:  # noqa: BLE001 - reported like a failed run
                _report(self.outcome, job[0], {"status": "failed", "error": _error_line(exc), "time_s": 0.0},
                        self.total, self.log)
                continue
            return job, t0
        return None

    def finish(self, job: Job, result: dict, t0: float, running: int) -> None:
        """Record ``job``'s ``result`` or, when it failed for lack of CUDA memory and may still be retried, queue it
        again; ``running``: the jobs that were running when it ended, itself included."""
        name = job[0]
        out_of_memory = result["status"] == "failed" and any(m in (result["error"] or "") for m in OOM_MARKERS)
        if out_of_memory and self.retries.get(name, 0) < MAX_OOM_RETRIES:
            self.retries[name] = self.retries.get(name, 0) + 1
            self.limit = max(1, min(self.limit, running - 1))
            self.pending.append(job)
            self.log(f"{name} ran out of GPU memory: queued again (at most {self.limit} runs at once from now on)")
            return
        result["time_s"] = time.perf_counter() - t0
        _report(self.outcome, name, result, self.total, self.log)


def _report(outcome: dict, name: str, result: dict, total: int, log) -> None:
    outcome[name] = result
    log(outcome_line(len(outcome), total, name, result))


def _error_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _execute_here(jobs: list[Job], log, before_job: dict) -> dict[str, dict]:
    outcome: dict[str, dict] = {}
    for name, fn, _, log_path in jobs:
        t0 = time.perf_counter()
        try:
            if name in before_job:
                before_job[name]()
            fn()
            result = {"status": "ok", "error": None}
        except RunStopped as exc:
            result = {"status": "stopped", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(traceback.format_exc())
            result = {"status": "failed", "error": _error_line(exc)}
        result["time_s"] = time.perf_counter() - t0
        _report(outcome, name, result, len(jobs), log)
    return outcome


def _execute_ray(jobs: list[Job], workers: int, log, gpus, before_job: dict, address, gpu_share,
                 after: dict | None = None) -> dict[str, dict]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        handlers = _signal_handlers()
        _init_ray(workers, gpus, address)
        _restore_signal_handlers(handlers)  # Ray's own SIGTERM handler would abort the driver without cancelling
    try:
        if gpu_share is None:
            gpu_share = default_gpu_share(workers, ray.cluster_resources().get("GPU", 0.0))
        # max_calls=0: reuse worker processes for GPU tasks too (Ray's default starts one per GPU task to free its
        # memory, but the job runs in a subprocess: the worker itself never touches the GPU)
        task = ray.remote(num_cpus=1, num_gpus=gpu_share, max_retries=MAX_RETRIES, max_calls=0)(_run_task)
        env = _job_env(workers)
        stop_flag = ray.remote(num_cpus=0)(_StopFlag).remote()
        dispatch = _Dispatch(jobs, workers, before_job, log, after)
        running: dict = {}  # object ref -> (job, start time)
        try:
            while dispatch.pending or running:
                while (started := dispatch.next_job(len(running))) is not None:
                    _, _, command, log_path = started[0]
                    running[task.remote(command, log_path, env, stop_flag)] = started
                if not running:
                    continue
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    job, t0 = running.pop(ref)
                    try:
                        ray.get(ref)
                        result = {"status": "ok", "error": None}
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause if exc.cause is not None else exc
                        result = ({"status": "stopped", "error": str(cause)} if isinstance(cause, RunStopped)
                                  else {"status": "failed", "error": _error_line(cause)})
                    except ray.exceptions.RayError as exc:  # the worker died more often than it may be retried
                        result = {"status": "failed", "error": _error_line(exc)}
                    dispatch.finish(job, result, t0, len(running) + 1)
        except KeyboardInterrupt:
            ray.get(stop_flag.set.remote())  # each running task sends SIGTERM to its run, which checkpoints and exits
            ray.wait(list(running), num_returns=len(running), timeout=STOP_TIMEOUT_S + 10)
            _log_stopped(running.values(), log)
            raise
        return dispatch.outcome
    finally:
        if started_here:
            ray.shutdown()


def _log_stopped(running, log) -> None:
    """What each stopped run kept, from its log (``running``: ``(job, start time)`` pairs)."""
    for (name, _, _, log_path), t0 in running:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        log(f"{name} {stop_message(text)} ({time.perf_counter() - t0:.0f} s)")


def _run_reporting(job: Job, env: dict, stop: threading.Event, finished: queue.Queue) -> None:
    """One local job's thread: run its command, then put ``(name, result)`` on ``finished``."""
    name, _, command, log_path = job
    try:
        run_logged(command() if callable(command) else list(command), log_path, env, stop.is_set)
        result = {"status": "ok", "error": None}
    except (RunStopped, KeyboardInterrupt) as exc:
        result = {"status": "stopped", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
        result = {"status": "failed", "error": _error_line(exc)}
    finished.put((name, result))


def _execute_local(jobs: list[Job], workers: int, log, gpus: list[int] | None, before_job: dict,
                   after: dict | None = None) -> dict[str, dict]:
    """The jobs' commands as local subprocesses, at most ``workers`` at once (a thread waits on each), each on the
    GPU of ``gpus`` that the fewest running jobs share."""
    env = {**os.environ, **_job_env(workers)}
    stop, finished = threading.Event(), queue.Queue()
    dispatch = _Dispatch(jobs, workers, before_job, log, after)
    running: dict[str, tuple] = {}  # name -> (job, start time, GPU or None, thread)
    try:
        while dispatch.pending or running:
            while (started := dispatch.next_job(len(running))) is not None:
                job, t0 = started
                gpu = min(gpus, key=lambda g: sum(r[2] == g for r in running.values())) if gpus else None
                job_env = env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": str(gpu)}
                thread = threading.Thread(target=_run_reporting, args=(job, job_env, stop, finished), daemon=True)
                running[job[0]] = (job, t0, gpu, thread)
                thread.start()
            if not running:
                continue
            try:
                name, result = finished.get(timeout=0.5)
            except queue.Empty:
                continue
            job, t0, _, _ = running.pop(name)
            dispatch.finish(job, result, t0, len(running) + 1)
    except KeyboardInterrupt:
        stop.set()  # each running job sends SIGTERM to its run, which checkpoints and exits
        for _, _, _, thread in running.values():
            thread.join(timeout=STOP_TIMEOUT_S + 10)
        _log_stopped([(job, t0) for job, t0, _, _ in running.values()], log)
        raise
    return dispatch.outcome


def _signal_handlers() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict) -> None:
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _init_ray(workers: int, gpus: list[int] | None, address: str | None) -> None:
    """Join the cluster at ``address``, or start a local Ray instance for ``workers`` jobs on ``gpus``."""
    import ray

    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is not None:
        ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        return
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:  # Ray hands out the devices CUDA_VISIBLE_DEVICES lists (by default every visible one)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    try:
        ray.init(num_cpus=max(workers, os.cpu_count() or 1),
                 num_gpus=len(gpus) if gpus is not None else len(visible_gpus() or []),
                 object_store_memory=OBJECT_STORE_BYTES, **quiet)
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
