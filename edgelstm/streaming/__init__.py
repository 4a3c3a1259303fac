"""Chunk-by-chunk inference with per-stream state (MLX or ONNX Runtime backends)."""

from edgelstm.streaming.session import StreamingSession, stream_chunks

__all__ = ["StreamingSession", "stream_chunks"]
