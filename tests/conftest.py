"""Shared fixtures: one tiny-preset model per test session (random weights from a fixed seed)."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def example_request():
    """``example_request(**fields)``: a generation request for the example portrait and speech."""
    from pipeline.audio import decode_audio
    from pipeline.conditioning import load_image
    from pipeline.pipeline import GenerationRequest

    image, speech = load_image(ASSETS / "portrait.png"), decode_audio(ASSETS / "speech.wav")

    def make(**fields):
        return GenerationRequest(
            **{"image": image, "speech": speech, "prompt": "a woman is talking", **fields}
        )

    return make


@pytest.fixture(scope="session")
def tiny_components():
    from pipeline.components import load_components

    return load_components("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_components):
    from pipeline.pipeline import InfiniteTalkPipeline

    return InfiniteTalkPipeline(tiny_components)
