"""Timing a step on a device: wall time per call with one sync per call, peak memory, capture as a CUDA graph, and
the kernels one call launches (on a CPU: the aten operators that do work)."""

from __future__ import annotations

import time

import torch

from ..inference.graphed_step import capture

__all__ = ["capture_step", "count_kernels", "peak_gib", "sync", "time_steps"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, steps: int, device) -> list[float]:
    """Milliseconds of each of ``steps`` calls (one sync per step: what a training loop that logs sees)."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def peak_gib(fn, device) -> tuple[float | None, float | None]:
    """``(peak, transient)`` GiB of one call: ``max_memory_allocated`` (reset before; weights included) and the
    same minus what was allocated when the call began (the step's own activations, gradients, workspaces)."""
    if device.type != "cuda":
        return None, None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / 2**30, (peak - before) / 2**30


def capture_step(fn, warmup: int, device):
    """Warm ``fn`` up on the shared side stream (one for every row and for :func:`_warm_up`: a new stream per
    row would keep its own cuBLAS workspace, counted in every later row's peak), capture it as a CUDA graph."""
    graph = capture(fn, device, warmup=max(warmup, 2))
    sync(device)
    return graph


# aten operators that launch no kernel (views, metadata, allocations): left out of a CPU step's count
_NO_KERNEL_OPS = frozenset(f"aten::{name}" for name in (
    "alias", "as_strided", "broadcast_tensors", "chunk", "contiguous", "detach", "diagonal", "empty", "empty_like",
    "empty_strided", "expand", "expand_as", "flatten", "lift_fresh", "movedim", "narrow", "new_empty",
    "new_empty_strided", "permute", "reshape", "resolve_conj", "resolve_neg", "result_type", "select", "slice",
    "split", "split_with_sizes", "squeeze", "t", "to", "transpose", "unbind", "unflatten", "unsqueeze", "view",
    "view_as", "_reshape_alias", "_to_copy", "_unsafe_view"))


def count_kernels(fn, device) -> dict:
    """Kernels of one call of ``fn``: CUDA kernels on a GPU; on the CPU, aten operators that do work (those with
    no operator under them, views and allocations left out), a stand-in for the kernels a GPU would launch."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        sync(device)
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:
        kernels = [e for e in prof.events() if e.name.startswith("aten::") and e.name not in _NO_KERNEL_OPS
                   and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    averages = prof.key_averages()
    busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) for e in averages)
    top = ""
    for key in ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",):
        try:
            top = averages.table(sort_by=key, row_limit=30)
            break
        except Exception:  # noqa: BLE001  (the sort key was renamed across torch versions)
            continue
    return {"kernels": len(kernels), "kernel_time_ms": busy / 1e3, "top": top}
