"""cnn-parity's framework-neutral core: data, recipes, the shared training loop and CLI, reports.

Imports neither JAX nor PyTorch (a test checks this).
"""
