"""CI runs every test: with CNN_PARITY_REQUIRE_ALL=1 (.ci/run sets it) a test that skips fails instead, so
a missing system package, privilege or optional extra cannot pass CI silently."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CNN_PARITY_REQUIRE_ALL") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run (CNN_PARITY_REQUIRE_ALL=1): {reason}"
