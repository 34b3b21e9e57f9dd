"""Side-by-side Flax / PyTorch benchmarks: `python -m benchmarks.run --out DIR` (see benchmarks/README.md)."""
