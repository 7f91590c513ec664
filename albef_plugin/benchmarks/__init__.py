"""Measurement helpers behind ``tools/benchmark.py``: the training step on synthetic data,
the official-size CPU comparison, the profiler breakdown, data loading, retrieval evaluation
at COCO size and memory growth. Nothing here is imported by training."""
