"""Fidelity while training: validation records, the best-checkpoint rule, overfitting and early stop.

Everything here is torch-free: the trainer computes the numbers (``trainers/validation.py``); the
CLI, evaluation, export and the web UI read them from the run directory through this package.
"""
