"""Metric-learning losses."""
