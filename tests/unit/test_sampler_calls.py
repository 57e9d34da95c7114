"""The sampler's call to the audio encoder: a failure there is the encoder's, not the sampler's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from serve.deployments import sampler as sampler_module
from serve.deployments.sampler import Sampler
from serve.jobs.runner import DependencyFailed


class Response:
    def __init__(self, error: Exception) -> None:
        self.error, self.cancelled = error, False

    def result(self, timeout_s: float) -> None:
        raise self.error

    def cancel(self) -> None:
        self.cancelled = True


def sampler_calling(response: Response) -> Sampler:
    sampler = Sampler.__new__(Sampler)  # the call alone: no weights, no store
    sampler._audio_encoder = SimpleNamespace(encode=SimpleNamespace(remote=lambda speech, frames: response))
    sampler._worker, sampler._drain_seconds = SimpleNamespace(stop=lambda drain_seconds: None), 0.0
    return sampler


def test_an_encoder_that_died_mid_call_fails_the_attempt_as_a_dependency() -> None:
    died = RuntimeError("The actor died unexpectedly before finishing this task.")
    with pytest.raises(DependencyFailed, match="the audio encoder failed: The actor died") as raised:
        sampler_calling(Response(died))._encode_speech(np.zeros(16000, np.float32), 25)
    assert raised.value.__cause__ is died


def test_an_encoder_that_never_answers_is_cancelled_and_named(monkeypatch) -> None:
    monkeypatch.setattr(sampler_module, "AUDIO_ENCODE_TIMEOUT_SECONDS", 0.1)
    response = Response(TimeoutError())
    with pytest.raises(DependencyFailed, match=r"did not answer within 0\.1 s"):
        sampler_calling(response)._encode_speech(np.zeros(16000, np.float32), 25)
    assert response.cancelled
