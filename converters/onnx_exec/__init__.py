"""Execute ONNX graphs with MLX: the graph runner and its op registry."""
