"""Classifier-free guidance over text and speech (MODEL.md §5): which DiT passes a step runs, what each pass
is conditioned on, and how their velocities combine into one.

The reference has two scales: ``text`` (the seed API's ``cfg``) and ``audio``. A scale of 1 needs no pass of
its own, so the seed's default job (both 1) stays one pass per step:

* both 1: one pass, fully conditioned;
* text only: ``v = v_no_text + text·(v_full − v_no_text)``, two passes;
* audio only: ``v = v_no_audio + audio·(v_full − v_no_audio)``, two passes;
* both: ``v = v_neither + text·(v_full − v_no_text) + audio·(v_no_text − v_neither)``, three passes.

With ``audio = 1`` the three-pass formula reduces to the text-only one (the ``v_neither`` terms cancel),
which is why the reference's third pass can be left out there without changing a number. "No text" is the
negative prompt; "no audio" is speech embeddings of zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from pipeline.errors import InputError


class Condition(Enum):
    """What one pass of a step sees: the prompt or the negative prompt, the speech or none."""

    FULL = "full"
    NO_TEXT = "no_text"
    NO_AUDIO = "no_audio"
    NEITHER = "neither"

    @property
    def negative_prompt(self) -> bool:
        return self in (Condition.NO_TEXT, Condition.NEITHER)

    @property
    def silent(self) -> bool:
        return self in (Condition.NO_AUDIO, Condition.NEITHER)


@dataclass(frozen=True)
class Guidance:
    text: float = 1.0
    audio: float = 1.0

    def __post_init__(self) -> None:
        for name in ("text", "audio"):
            if not getattr(self, name) > 0:
                raise InputError(f"the {name} guidance scale must be positive, got {getattr(self, name)}")

    @property
    def passes(self) -> tuple[Condition, ...]:
        """The passes of one step, in the order of the batch the DiT gets."""
        text, audio = self.text != 1.0, self.audio != 1.0
        if text and audio:
            return (Condition.FULL, Condition.NO_TEXT, Condition.NEITHER)
        if text:
            return (Condition.FULL, Condition.NO_TEXT)
        if audio:
            return (Condition.FULL, Condition.NO_AUDIO)
        return (Condition.FULL,)

    @property
    def needs_negative_prompt(self) -> bool:
        return any(condition.negative_prompt for condition in self.passes)

    def combine(self, velocity: torch.Tensor) -> torch.Tensor:
        """The batch of the passes' velocities (in ``passes`` order) → the guided velocity (batch of 1)."""
        passes = self.passes
        if velocity.shape[0] != len(passes):
            raise ValueError(f"expected {len(passes)} velocities (one per pass), got {velocity.shape[0]}")
        v = dict(zip(passes, velocity.split(1), strict=True))
        full = v[Condition.FULL]
        if Condition.NEITHER in v:
            no_text, neither = v[Condition.NO_TEXT], v[Condition.NEITHER]
            return neither + self.text * (full - no_text) + self.audio * (no_text - neither)
        if Condition.NO_TEXT in v:
            return v[Condition.NO_TEXT] + self.text * (full - v[Condition.NO_TEXT])
        if Condition.NO_AUDIO in v:
            return v[Condition.NO_AUDIO] + self.audio * (full - v[Condition.NO_AUDIO])
        return full
