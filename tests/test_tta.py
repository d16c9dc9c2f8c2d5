"""Test-time augmentation (``agegender.evaluate.tta``): the views and their average."""

from __future__ import annotations

import pytest
import torch

from agegender.evaluate.tta import average_views, crop_offsets, tta_views


def test_oversample_gives_ten_views_of_the_right_crops():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    views = tta_views(x, 6, "oversample")
    assert views.shape == (10, 2, 3, 6, 6)
    assert crop_offsets(8, 6) == [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for v, (t, left) in enumerate(crop_offsets(8, 6)):
        assert torch.equal(views[v], x[:, :, t : t + 6, left : left + 6])
        assert torch.equal(views[v + 5], x[:, :, t : t + 6, left : left + 6].flip(-1))
    assert tta_views(x, 6, "none").shape == (1, 2, 3, 6, 6)
    assert torch.equal(tta_views(x, 6, "none")[0], x[:, :, 1:7, 1:7])
    flip = tta_views(x, 6, "flip")
    assert flip.shape == (2, 2, 3, 6, 6) and torch.equal(flip[1], flip[0].flip(-1))


def test_views_of_an_image_smaller_than_the_input_are_resized_up():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    assert tta_views(x, 6, "oversample").shape == (10, 1, 3, 6, 6)
    with pytest.raises(ValueError, match="unknown tta"):
        tta_views(x, 4, "five")


def test_average_views_is_the_mean_of_probabilities():
    a = {"gender": torch.tensor([[0.2, 0.8]]), "age": torch.tensor([30.0])}
    b = {"gender": torch.tensor([[0.6, 0.4]]), "age": torch.tensor([40.0])}
    mean = average_views([a, b])
    assert torch.allclose(mean["gender"], torch.tensor([[0.4, 0.6]]))
    assert torch.allclose(mean["age"], torch.tensor([35.0]))
