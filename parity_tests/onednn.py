"""Where the tests of the opt-in oneDNN convolutions run (tests/test_onednn_conv.py and the parity
suite's test_conv_impls.py): skipped, with the reason, where the extension is not built; a failure
instead where CNN_PARITY_REQUIRE_ONEDNN=1, as CI sets after building it, so that they cannot skip there."""

from __future__ import annotations

import os

import pytest

from flax_impl import onednn_conv

REQUIRE_ENV = "CNN_PARITY_REQUIRE_ONEDNN"


def skip_unless_built(module_level: bool = False) -> None:
    built, why = onednn_conv.status()
    if built:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but conv_impl onednn cannot load: {why}", pytrace=False)
    pytest.skip(f"conv_impl onednn: {why}", allow_module_level=module_level)
