"""Shared fixtures: one tiny-preset model per test session (random weights from a fixed seed)."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def tiny_components():
    from pipeline.components import load_components

    return load_components("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_components):
    from pipeline.pipeline import InfiniteTalkPipeline

    return InfiniteTalkPipeline(tiny_components)
