"""Copy many small device tensors to the host in one transfer per dtype instead of one (synchronising) copy each."""

from __future__ import annotations

import torch

__all__ = ["to_host"]


def to_host(obj):
    """``obj`` (tensors, possibly inside nested dicts, lists and tuples) with every tensor on the CPU, detached and
    contiguous.  Tensors on an accelerator are flattened and concatenated by (device, dtype), copied with one
    ``.cpu()`` per group and split back: a checkpoint of a model with hundreds of parameters and optimizer states
    then costs a few host syncs, not one per tensor."""
    found: list[torch.Tensor] = []
    _collect(obj, found)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(found):
        if t.device.type != "cpu":
            groups.setdefault((t.device, t.dtype), []).append(i)
    host = {}
    for members in groups.values():
        flat = torch.cat([found[i].detach().reshape(-1) for i in members]).cpu()
        for i, part in zip(members, flat.split([found[i].numel() for i in members])):
            host[i] = part.view(found[i].shape).clone()  # its own storage (safetensors refuses shared ones)
    return _rebuild(obj, iter(range(len(found))), found, host)


def _collect(obj, found: list) -> None:
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, found)


def _rebuild(obj, index, found, host):
    if isinstance(obj, torch.Tensor):
        i = next(index)
        return host[i] if i in host else found[i].detach().contiguous()
    if isinstance(obj, dict):
        return type(obj)((k, _rebuild(v, index, found, host)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(v, index, found, host) for v in obj)
    return obj
