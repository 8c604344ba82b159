"""Measurements of a compressed model: accuracy, storage size and real latency."""

from autocompress.measure._accuracy import accuracy, predict
from autocompress.measure._size import model_size_bytes

__all__ = ["accuracy", "model_size_bytes", "predict"]
