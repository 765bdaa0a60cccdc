"""embedtrain: train decoder LLMs into text embedders with DeepSpeed."""
__version__ = "0.1.0"
