"""The machine a run used, as results record it."""

from __future__ import annotations

import os
import platform

__all__ = ["machine_info"]


def machine_info(device: str) -> dict:
    """Versions and the device: ``{"torch", "python", "platform", "cpu_count", "device"}``, plus ``cuda`` and
    ``gpu_count`` on a CUDA device (``device`` is a device string such as ``"cuda"`` or ``"cpu"``)."""
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    if device != "cpu" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info
