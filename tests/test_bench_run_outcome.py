"""A benchmark job stopped by a signal is reported as stopped with its progress; a failure shows its log."""

import sys

import pytest

from bara_pyro.bench import scheduler
from bara_pyro.bench.run_outcome import INTERRUPT_STATUS, outcome_line, raise_for_exit, stop_message
from bara_pyro.inference.predictive import STOP_MESSAGE as PREDICT_STOP
from bara_pyro.inference.trainer import STOP_MESSAGE as TRAIN_STOP


def test_stop_messages_read_what_training_and_prediction_print():
    train = TRAIN_STOP.format(step=474, checkpoint="runs/x/checkpoint", run_dir="runs/x")
    assert stop_message("loading\n" + train + "\n") == ("stopped at step 474 (checkpoint kept); "
                                                          "run the same command to resume")
    predict = PREDICT_STOP.format(done=96, total=1267, path="runs/x/.partial")
    assert stop_message(train + "\n" + predict).startswith("stopped while evaluating, after 96 of 1267 examples")
    assert stop_message("loading the model\n").startswith("stopped before it saved any progress")


def test_run_logged_tells_a_stop_from_a_failure(tmp_path):
    log = tmp_path / "run.log"
    # an earlier segment's stop in the same log is not this segment's progress
    log.write_text(TRAIN_STOP.format(step=100, checkpoint="c", run_dir="r") + "\n")
    line = TRAIN_STOP.format(step=474, checkpoint="c", run_dir="r")
    with pytest.raises(scheduler.RunStopped) as stopped:
        scheduler.run_logged([sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr); "
                              f"sys.exit({INTERRUPT_STATUS})"], log)
    assert str(stopped.value) == "stopped at step 474 (checkpoint kept); run the same command to resume"
    tail = r"(?s)exit status 1; last lines of .*:\nstep 3\nCUDA out of memory"
    with pytest.raises(RuntimeError, match=tail) as failed:
        scheduler.run_logged([sys.executable, "-c", "print('step 3'); print('CUDA out of memory'); exit(1)"], log)
    assert not isinstance(failed.value, scheduler.RunStopped)


def test_progress_lines_of_stopped_and_failed_jobs(tmp_path):
    def stop():
        raise scheduler.RunStopped("stopped at step 7 (checkpoint kept); run the same command to resume")

    def fail():
        raise RuntimeError("exit status 1; last lines of x.log:\nTraceback\nValueError: bad")

    lines = []
    jobs = [("a", stop, None, tmp_path / "a.log"), ("b", fail, None, tmp_path / "b.log")]
    outcome = scheduler.execute(jobs, workers=1, log=lines.append)
    assert lines[0].startswith("[1/2] a stopped at step 7 (checkpoint kept); run the same command to resume (")
    assert lines[1].startswith("[2/2] b failed (") and lines[1].endswith("\n    Traceback\n    ValueError: bad")
    assert outcome["b"]["status"] == "failed"


def test_killed_job_is_a_failure_unless_the_benchmark_stops_it(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("")
    with pytest.raises(RuntimeError, match=r"killed by signal SIGKILL; .* is empty"):
        raise_for_exit(-9, log)
    with pytest.raises(scheduler.RunStopped, match="stopped before it saved any progress"):
        raise_for_exit(-9, log, stopping=True)
    raise_for_exit(0, log)


def test_outcome_line_of_a_failure_shows_every_line():
    text = outcome_line(2, 5, "bara/boolq/seed1",
                        {"status": "failed", "time_s": 474.2, "error": "exit status 2; last lines of l:\na\nb"})
    assert text == "[2/5] bara/boolq/seed1 failed (474 s): exit status 2; last lines of l:\n    a\n    b"
