"""Writing files and folders atomically: readers see the old version or the new one, never half of one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def temp_dir_beside(target: Path) -> Path:
    """Where a folder is assembled before replace_dir moves it into place (same filesystem, hidden name)."""
    return target.with_name(f".{target.name}.tmp{os.getpid()}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; the old one (if any) is removed only afterwards."""
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
