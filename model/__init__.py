"""The Siamese embedder, in sub-packages layered core <- data <- inference <- evaluation <- training (each imports
only from those to its left; ``cli.py`` sits above them all; tests/test_layers.py checks it)."""
