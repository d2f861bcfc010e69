"""Runnable applications built on the library: the one-command demo on real CT (``python -m
monai_metalr.apps.demo``), a synthetic quick check, and Models-Genesis-style self-supervised pre-training."""
