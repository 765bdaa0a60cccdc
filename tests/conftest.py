import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ["llama3", "chatml", "qwen2", "qwen3", "mistral", "gemma"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes a minute or more (real model conversion)")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """family -> path of a tiny random model of that family (built once per session)."""
    from embedtrain.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {f: make_tiny_model(f, root / f) for f in FAMILIES}
