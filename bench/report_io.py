"""What every bench report writes: OUT/table.md (markdown + the environment as JSON) and OUT/NAME.json."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def write_report(out: Path, name: str, lines: list[str], env: dict, payload: dict, notes: str = "") -> str:
    text = "\n".join(lines) + "\n\n```json\n" + json.dumps(env, indent=1) + "\n```\n" + notes
    (out / "table.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(dict(payload, env=env), indent=1))
    print(text)
    return text
