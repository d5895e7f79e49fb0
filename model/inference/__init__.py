"""Running a checkpoint fast: engines (ONNX Runtime, PyTorch), decoding, worker pools, the Embedder, cached
backbone features (used by training and evaluation alike), and the verdict on two embeddings (``compare``)."""
