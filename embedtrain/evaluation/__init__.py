"""Evaluation: mteb runs on embedtrain models and the offline MTEB-shaped suite built from real text."""
