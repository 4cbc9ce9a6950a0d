"""Stopping long loops cleanly: SIGINT/SIGTERM set a flag that the loop reads at its next boundary.

Training (:func:`~bara_pyro.inference.fit`) and resumable prediction
(:func:`~bara_pyro.inference.predict` with a ``checkpoint``) both write a consistent checkpoint at the
boundary and then raise ``KeyboardInterrupt``; a second Ctrl-C raises it at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import torch

__all__ = ["StopRequest", "stop_on_signals", "rng_state", "set_rng_state"]


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop stops at its next boundary, so what it saves is consistent.
    A second Ctrl-C raises ``KeyboardInterrupt`` at once."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest):
    """Route SIGINT and SIGTERM to ``stop`` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rng_state() -> dict:
    """torch's CPU generator state and, where CUDA is available, every GPU's (Pyro samples from these)."""
    state = {"rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
