"""Shared fixtures. Real checkpoints and golden outputs come from ``../shared``
(or ``$LUMI_ASSETS``); tests that need them skip with the reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("LUMI_ASSETS", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared assets folder (``$LUMI_ASSETS``, default ``../shared``)."""
    if not (ASSETS / "models").is_dir():
        pytest.skip(f"shared assets not found at {ASSETS} (set LUMI_ASSETS to the folder holding models/ and golden/)")
    return ASSETS


def asset(assets: Path, rel: str) -> Path:
    """One file under the assets folder, or a skip naming it."""
    path = assets / rel
    if not path.exists():
        pytest.skip(f"asset {path} not found")
    return path


@pytest.fixture
def without_cupy():
    """For tests of the errors a machine without CuPy gives: skipped where CuPy is installed."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return
    pytest.skip("CuPy is installed here")
