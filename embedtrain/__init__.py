"""embedtrain: train decoder LLMs into text embedders with DeepSpeed."""
__version__ = "0.1.0"


def load(path, device=None, dtype=None, attn_backend="auto", max_length=None):
    """Load a finished run or exported folder for encoding: see embedtrain.api.load."""
    from embedtrain.api import load as _load

    return _load(path, device=device, dtype=dtype, attn_backend=attn_backend, max_length=max_length)
