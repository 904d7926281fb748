"""Fixtures for unit tests that shell out to Debian's promtool and amtool."""

from __future__ import annotations

import os
import shutil

import pytest


def os_tool(name: str, package: str) -> str:
    """The tool's path; skipped where it is missing, except in CI, where that fails."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH (Debian: apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return os_tool("promtool", "prometheus")


@pytest.fixture(scope="module")
def amtool() -> str:
    return os_tool("amtool", "prometheus-alertmanager")
