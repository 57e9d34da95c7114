"""A speaker's box in a portrait; torch-free, so the HTTP ingress checks boxes at submit without the model."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import InputError


@dataclass(frozen=True)
class Box:
    """A speaker's region in pixels of the portrait as given: ``left ≤ x < right``, ``top ≤ y < bottom``."""

    left: float
    top: float
    right: float
    bottom: float

    def check(self, name: str, image_size: tuple[int, int]) -> None:
        width, height = image_size
        if not (0 <= self.left < self.right <= width and 0 <= self.top < self.bottom <= height):
            raise InputError(
                f"{name} box {[self.left, self.top, self.right, self.bottom]} must be [left, top, right, "
                f"bottom] with left < right ≤ {width} and top < bottom ≤ {height} (the portrait's pixels)"
            )
