"""Small training setups for tests that run embedtrain's CLI: tiny model + quickstart pairs, and plug-in objectives
(a plugin file registers them, then calls main())."""
from pathlib import Path

from embedtrain.tiny import make_tiny_model

from test_distributed import DATA

CLI_MAIN = '''

if __name__ == "__main__":
    from embedtrain.cli import main

    sys.exit(main())
'''


def plugin_setup(root: Path, name: str, source: str, examples: int) -> Path:
    """root/NAME.py (the plugin + the CLI), root/train.jsonl (the first quickstart pairs) and a tiny model."""
    (root / f"{name}.py").write_text(source + CLI_MAIN)
    (root / "train.jsonl").write_text("".join(open(DATA).readlines()[:examples]))
    return make_tiny_model("chatml", root / "model")


def tiny_setup(root: Path, files: dict[str, tuple[int, int]]) -> Path:
    """root/NAME for each name -> (first, last) slice of the quickstart pairs, and a tiny chatml model."""
    lines = open(DATA).readlines()
    for name, (a, b) in files.items():
        (root / name).write_text("".join(lines[a:b]))
    return make_tiny_model("chatml", root / "model")
