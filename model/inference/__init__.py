"""Running a checkpoint fast: engines (ONNX Runtime, PyTorch), decoding, worker pools, the Embedder, and
cached backbone features."""
