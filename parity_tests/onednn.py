"""Where the tests of the opt-in oneDNN convolutions run (tests/test_onednn_conv.py and the parity
suite's test_conv_impls.py): skipped, with the reason, where the extension is not built (CI builds it,
and fails any skip: conftest.py)."""

from __future__ import annotations

import pytest

from flax_impl import onednn_conv


def skip_unless_built(module_level: bool = False) -> None:
    built, why = onednn_conv.status()
    if not built:
        pytest.skip(f"conv_impl onednn: {why}", allow_module_level=module_level)
