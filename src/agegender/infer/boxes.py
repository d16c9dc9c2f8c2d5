"""The face box every detector returns (its own module, so detectors and the face path
import it without importing one another)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Box"]


@dataclass(frozen=True)
class Box:
    """A face box in full-image pixel coordinates with the detector's score.

    ``landmarks``: facial key points ``(x, y)`` in the same pixel coordinates, from
    detectors that find them (BlazeFace: right eye, left eye, nose tip, mouth centre, right
    ear tragion, left ear tragion; "right" is the subject's right, on the image's left);
    None from the others.
    """

    x: int
    y: int
    w: int
    h: int
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)
