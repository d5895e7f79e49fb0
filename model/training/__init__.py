"""Metric-learning training: the options, the losses (a registry), setup, the epoch loop and ``imgsim train``.
Validates with :mod:`model.evaluation`; nothing below imports training."""
