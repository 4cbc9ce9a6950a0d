import os

import pyro
import pytest
import torch
from builders import make_tiny_bert, make_tiny_llama


def pytest_configure(config):
    """Under ``pytest -n N`` (pytest-xdist) each worker process, and every process it starts, computes on one
    thread: N workers with a thread per core each would oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.enable_validation(False)


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray instance per test module that schedules jobs through Ray (starting one takes seconds).
    It declares 2 GPUs whether or not the machine has them: Ray only hands out their indices."""
    ray = pytest.importorskip("ray")
    from bara_pyro.bench.scheduler import OBJECT_STORE_BYTES

    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=OBJECT_STORE_BYTES)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def smollm_tokenizer():
    """The packaged SmolLM2-135M tokenizer, with its end-of-sequence token as padding."""
    from transformers import AutoTokenizer

    from bara_pyro.assets import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
