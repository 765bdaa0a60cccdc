"""Objectives defined outside embedtrain, run through its CLI: the plugin file registers them, then calls main()."""
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
