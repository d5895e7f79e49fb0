"""Photos as training data: folder-per-class galleries and their splits, datasets, pair samplers, Stanford Dogs."""
