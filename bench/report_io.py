"""What every bench report writes: OUT/table.md (markdown + the environment as JSON) and OUT/NAME.json."""
from __future__ import annotations

import datetime
import importlib.metadata as md
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*cmd) -> str:
    return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def git_commit() -> str:
    return _git("rev-parse", "--short", "HEAD")


def environment(*packages: str) -> dict:
    """The host, torch / transformers / embedtrain versions, the commit (-dirty with uncommitted changes), the date
    and the load average now (call it before the work), plus the versions of `packages` (None: not installed)."""
    import torch
    import transformers

    import embedtrain

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    env = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
           "load_avg_1min_at_start": os.getloadavg()[0], "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "embedtrain": getattr(embedtrain, "__version__", "unknown"),
           "commit": (git_commit() or "unknown") + ("-dirty" if _git("status", "--porcelain") else ""),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    for name in packages:
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    return env


def write_report(out: Path, name: str, lines: list[str], env: dict, payload: dict, notes: str = "") -> str:
    text = "\n".join(lines) + "\n\n```json\n" + json.dumps(env, indent=1) + "\n```\n" + notes
    (out / "table.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(dict(payload, env=env), indent=1))
    print(text)
    return text
