"""Measuring a checkpoint beside the frozen backbone: metrics, evaluation runs, reports and plots."""
