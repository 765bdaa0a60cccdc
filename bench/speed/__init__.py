"""Pieces of bench/train_speed.py: the length-mix data, the padded baselines and one timed run."""
