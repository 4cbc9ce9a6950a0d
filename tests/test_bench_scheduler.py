"""The benchmark's job scheduler: Ray tasks on a local Ray instance (conftest's, 2 declared GPUs), and the
in-process path."""

import sys
import time

import pytest

from bara_pyro.bench import scheduler


def test_a_failed_job_is_reported_and_the_others_finish(local_ray, tmp_path):
    jobs = [(name, None, [sys.executable, "-c", code], tmp_path / f"{name}.log")
            for name, code in (("good", "print('fine')"), ("bad", "import sys; print('broken'); sys.exit(3)"))]
    outcome = scheduler.execute(jobs, workers=2, log=lambda msg: None, gpu_share=0.0)
    assert outcome["good"]["status"] == "ok"
    assert outcome["bad"]["status"] == "failed" and "exit status 3" in outcome["bad"]["error"]
    assert "broken" in outcome["bad"]["error"]
    assert local_ray.is_initialized()  # an instance it did not start is left running


GPU_PROBE = ("import os, time; print('gpu=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'none'), time.time()); "
             "time.sleep(0.5); print('end', time.time())")


def _assert_two_per_gpu(tmp_path, count: int) -> None:
    """Each of the ``count`` GPU_PROBE jobs saw exactly one of GPUs 0 and 1, and never three ran at once on one."""
    spans = {"0": [], "1": []}
    for i in range(count):
        lines = (tmp_path / f"job{i}.log").read_text().split("\n")
        start = next(line for line in lines if line.startswith("gpu="))
        end = next(line for line in lines if line.startswith("end"))
        spans[start.split()[0][4:]].append((float(start.split()[1]), float(end.split()[1])))
    assert sum(len(v) for v in spans.values()) == count
    for intervals in spans.values():
        for t, _ in intervals:
            assert sum(a <= t < b for a, b in intervals) <= 2


def test_runs_share_the_gpus_as_asked(local_ray, tmp_path):
    """4 runs at once on 2 GPUs: a share of 0.5 each, so Ray gives every run one GPU and never more than 2 runs
    the same GPU at a time (which GPU is Ray's choice); the command is built when the job starts (a callable)."""
    jobs = [(f"job{i}", None, lambda: [sys.executable, "-c", GPU_PROBE], tmp_path / f"job{i}.log") for i in range(8)]
    assert scheduler.default_gpu_share(workers=4, num_gpus=2) == 0.5
    outcome = scheduler.execute(jobs, workers=4, log=lambda msg: None)
    assert all(o["status"] == "ok" for o in outcome.values()), outcome
    _assert_two_per_gpu(tmp_path, 8)


def test_one_worker_runs_the_jobs_here_in_order(tmp_path):
    order = []
    jobs = [(f"job{i}", (lambda i=i: order.append(i)), None, tmp_path / f"job{i}.log") for i in range(3)]
    jobs.append(("broken", lambda: 1 / 0, None, tmp_path / "broken.log"))
    t0 = time.perf_counter()
    outcome = scheduler.execute(jobs, workers=1, log=lambda msg: None, before_job={"job1": lambda: order.append("b")})
    assert order == [0, "b", 1, 2] and time.perf_counter() - t0 < 1.0
    assert outcome["broken"]["status"] == "failed" and "ZeroDivisionError" in outcome["broken"]["error"]
    assert "Traceback" in (tmp_path / "broken.log").read_text()


@pytest.mark.parametrize("workers, gpus, share", [(1, 0, 0.0), (2, 1, 0.5), (4, 8, 1.0), (3, 2, 2 / 3)])
def test_default_gpu_share(workers, gpus, share):
    assert scheduler.default_gpu_share(workers, gpus) == pytest.approx(share)


def _use_path(path: str, request, monkeypatch) -> None:
    """Schedule through the local Ray instance (``ray``) or as local subprocesses, as without Ray (``local``)."""
    if path == "ray":
        request.getfixturevalue("local_ray")
    else:
        monkeypatch.setitem(sys.modules, "ray", None)


@pytest.mark.parametrize("path", ["ray", "local"])
def test_an_interrupted_driver_stops_its_running_jobs_with_sigterm(path, request, monkeypatch, tmp_path):
    """Ctrl-C in the driver (here raised by the second job's hook once the first job runs): the running job's
    subprocess gets SIGTERM (a training checkpoints then) and the driver waits for it before re-raising."""
    _use_path(path, request, monkeypatch)
    code = ("import pathlib, signal, sys, time\n"
            f"out = pathlib.Path({str(tmp_path / 'out')!r})\n"
            "def stop(signum, frame):\n    out.write_text('stopped'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, stop)\nprint('started', flush=True)\ntime.sleep(60)\n"
            "out.write_text('ran to the end')\n")
    log0 = tmp_path / "job0.log"

    def interrupt_once_job0_runs():
        deadline = time.time() + 60
        while "started" not in (log0.read_text() if log0.exists() else "") and time.time() < deadline:
            time.sleep(0.2)
        raise KeyboardInterrupt

    jobs = [("job0", None, [sys.executable, "-c", code], log0),
            ("job1", None, [sys.executable, "-c", "pass"], tmp_path / "job1.log")]
    t0 = time.perf_counter()
    lines = []
    with pytest.raises(KeyboardInterrupt):
        scheduler.execute(jobs, workers=2, log=lines.append, gpu_share=0.0, gpus=[],
                          before_job={"job1": interrupt_once_job0_runs})
    assert (tmp_path / "out").read_text() == "stopped" and time.perf_counter() - t0 < 55
    assert any(line.startswith("job0 stopped before it saved any progress; run the same command to resume")
               for line in lines), lines


def test_a_stopped_job_is_reported_as_stopped(local_ray, tmp_path):
    """A run that a signal stopped after its checkpoint (exit status 130 and the trainer's message) is not failed."""
    from bara_pyro.inference.trainer import STOP_MESSAGE

    line = STOP_MESSAGE.format(step=474, checkpoint="c", run_dir="r")
    jobs = [("stopped", None, [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr); sys.exit(130)"],
             tmp_path / "stopped.log")]
    lines = []
    outcome = scheduler.execute(jobs, workers=2, log=lines.append, gpu_share=0.0)
    assert outcome["stopped"]["status"] == "stopped"
    assert outcome["stopped"]["error"] == "stopped at step 474 (checkpoint kept); run the same command to resume"
    assert "stopped at step 474 (checkpoint kept)" in lines[0]


@pytest.fixture
def no_ray(monkeypatch):
    """``import ray`` fails, as where Ray is not installed."""
    monkeypatch.setitem(sys.modules, "ray", None)


def test_without_ray_the_jobs_run_as_local_subprocesses_on_the_least_shared_gpu(no_ray, tmp_path):
    """4 at once on 2 GPUs: each job sees one GPU, never more than 2 jobs share one; a failure is reported."""
    jobs = [(f"job{i}", None, [sys.executable, "-c", GPU_PROBE], tmp_path / f"job{i}.log") for i in range(8)]
    jobs.append(("bad", None, [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"], tmp_path / "bad.log"))
    lines = []
    t0 = time.perf_counter()
    outcome = scheduler.execute(jobs, workers=4, log=lines.append, gpus=[0, 1])
    assert lines[0] == "Ray is not installed: up to 4 runs at once as local subprocesses"
    assert time.perf_counter() - t0 < 8 * 0.5  # not one after another
    assert outcome["bad"]["status"] == "failed" and "exit status 3" in outcome["bad"]["error"]
    assert all(outcome[f"job{i}"]["status"] == "ok" for i in range(8)), outcome
    _assert_two_per_gpu(tmp_path, 8)


@pytest.mark.parametrize("path", ["local", "ray"])
def test_a_job_out_of_cuda_memory_is_queued_again_with_fewer_at_once(path, request, monkeypatch, tmp_path):
    """The first try prints torch's out-of-memory error and fails; the second, queued again, succeeds; from then on
    fewer jobs start at once than were running when it failed."""
    _use_path(path, request, monkeypatch)
    # The three jobs overlap whatever their start-up times: the first try of "oom" fails only once the other two
    # have started, and they end 2 s after it has failed (Ray's workers can take seconds to start on a busy machine).
    marker, started = tmp_path / "tried", [tmp_path / f"started{i}" for i in range(2)]
    wait_for = ("import pathlib, sys, time\n\n\ndef wait_for(*paths):\n    t = time.time() + 120\n"
                "    while not all(pathlib.Path(p).exists() for p in paths) and time.time() < t:\n"
                "        time.sleep(0.05)\n\n\n")
    (tmp_path / "oom.py").write_text(
        wait_for + "if not pathlib.Path(sys.argv[1]).exists():\n    wait_for(*sys.argv[2:])\n"
        "    pathlib.Path(sys.argv[1]).write_text('1')\n    print('torch.OutOfMemoryError: CUDA out of memory.')\n"
        "    sys.exit(1)\nprint('fine')\n")
    (tmp_path / "other.py").write_text(
        wait_for + "pathlib.Path(sys.argv[1]).write_text('1')\nwait_for(sys.argv[2])\ntime.sleep(2.0)\n")
    jobs = [("oom", None, [sys.executable, str(tmp_path / "oom.py"), str(marker), *map(str, started)],
             tmp_path / "oom.log")]
    jobs += [(f"job{i}", None, [sys.executable, str(tmp_path / "other.py"), str(started[i]), str(marker)],
              tmp_path / f"job{i}.log") for i in range(2)]
    lines = []
    outcome = scheduler.execute(jobs, workers=3, log=lines.append, gpus=[], gpu_share=0.0)
    assert outcome["oom"]["status"] == "ok" and "fine" in (tmp_path / "oom.log").read_text()
    assert "oom ran out of GPU memory: queued again (at most 2 runs at once from now on)" in lines
    never = [(f"never{i}", None, [sys.executable, "-c", "print('torch.OutOfMemoryError'); raise SystemExit(1)"],
              tmp_path / f"never{i}.log") for i in range(1)]
    lines = []
    outcome = scheduler.execute(never, workers=2, log=lines.append, gpus=[], gpu_share=0.0)
    assert outcome["never0"]["status"] == "failed"  # retried MAX_OOM_RETRIES times, then reported
    assert sum("ran out of GPU memory" in line for line in lines) == scheduler.MAX_OOM_RETRIES


def test_a_job_starts_after_the_jobs_it_waits_for_and_later_ones_meanwhile(no_ray, tmp_path):
    """``after``: the second job starts only once the first has ended (it finds the first one's file), while the
    third, listed after it, starts meanwhile (the second finds the third's file too)."""
    first, third = tmp_path / "first", tmp_path / "third"
    slow_first = f"import pathlib, time; time.sleep(1.0); pathlib.Path({str(first)!r}).write_text('done')"
    check = (f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(first)!r}).exists() "
             f"and pathlib.Path({str(third)!r}).exists() else 1)")
    jobs = [("first", None, [sys.executable, "-c", slow_first], tmp_path / "first.log"),
            ("second", None, [sys.executable, "-c", check], tmp_path / "second.log"),
            ("third", None, [sys.executable, "-c", f"import pathlib; pathlib.Path({str(third)!r}).write_text('x')"],
             tmp_path / "third.log")]
    outcome = scheduler.execute(jobs, workers=2, log=lambda msg: None, gpus=[], gpu_share=0.0,
                                after={"second": {"first", "not a job here"}})
    assert {name: o["status"] for name, o in outcome.items()} == {"first": "ok", "second": "ok", "third": "ok"}
    assert list(outcome) == ["third", "first", "second"]
