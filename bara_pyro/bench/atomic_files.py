"""Files a benchmark writes, written atomically: a stopped run never leaves half a file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["copy_file", "json_default", "write_json"]


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default))
    os.replace(tmp, path)


def json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def copy_file(src: Path, dst: Path) -> None:
    import shutil

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
