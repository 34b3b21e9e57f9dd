"""Cross-framework parity suite: Flax (flax_impl) against PyTorch (torch_ref), all five models.

`pytest parity_tests` runs it; `python -m parity_tests.report --out DIR` writes the numbers.
The only place besides benchmarks/ that imports both frameworks.
"""
