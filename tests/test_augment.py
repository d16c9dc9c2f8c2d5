"""Batched augmentation: shapes, exact eval crops, determinism, and that ops really act."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agegender.config import AugmentConfig
from agegender.data.augment import LUMA, Preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def batch(n: int = 8, size: int = 40, seed: int = 0) -> torch.Tensor:
    """Structured uint8 images (gradients + blobs), channels-last like the cache."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        base = (xx * rng.uniform(1, 5) + yy * rng.uniform(1, 5)) % 256
        imgs[i] = np.stack([base, 255 - base, (base * 3) % 256], -1)
        imgs[i] += rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2)


def prep(recipe: list, size: int = 40, input_size: int | None = None, **kw) -> Preprocess:
    return Preprocess(
        size=size,
        input_size=input_size or size,
        mean=MEAN,
        std=STD,
        recipe=AugmentConfig(recipe=recipe, **kw),
    )


def unnormalise(z: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return z * s + m


def test_eval_is_exact_centre_crop_normalised() -> None:
    x = batch(4, 48)
    p = prep([], size=48, input_size=40)
    out = p.eval(x)
    assert out.shape == (4, 3, 40, 40) and out.dtype == torch.float32 and out.is_contiguous()
    ref = x[:, :, 4:44, 4:44].float() / 255
    assert torch.allclose(unnormalise(out), ref, atol=1e-5)


def test_eval_resizes_up_when_cache_is_smaller() -> None:
    out = prep([], size=32, input_size=48).eval(batch(2, 32))
    assert out.shape == (2, 3, 48, 48)
    u = unnormalise(out)
    assert u.min() >= -1e-6 and u.max() <= 1 + 1e-6


def test_train_shapes_dtype_channels_last() -> None:
    recipe = [
        "resized_crop",
        "hflip",
        "rotation",
        "color_jitter",
        "grayscale",
        "gaussian_noise",
        "random_erasing",
    ]
    p = Preprocess(
        size=48,
        input_size=40,
        mean=MEAN,
        std=STD,
        recipe=AugmentConfig(recipe=recipe),
        channels_last=True,
    )
    out = p.train(batch(6, 48), 0)
    assert out.shape == (6, 3, 40, 40) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    u = unnormalise(out)
    assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5  # clamped to the valid pixel range


def test_same_seed_same_output_different_seed_different() -> None:
    p = prep(["resized_crop", "hflip", "rotation", "color_jitter", "gaussian_noise"])
    x = batch()
    a, b, c = p.train(x, 7), p.train(x, 7), p.train(x, 8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.manual_seed(3)
    d = p.train(x)
    torch.manual_seed(3)
    assert torch.equal(d, p.train(x))  # no rng given: follows torch's global seed


def test_no_recipe_is_the_eval_view() -> None:
    x = batch(4, 48)
    p = prep([], size=48, input_size=40)
    assert torch.allclose(p.train(x, 0), p.eval(x), atol=1e-5)


def test_hflip_mirrors_exactly_the_flipped_samples() -> None:
    x = batch(16)
    p = prep([{"op": "hflip", "p": 0.5}])
    out, ref = p.train(x, 1), p.eval(x)
    flipped = [torch.allclose(out[i], ref[i].flip(-1), atol=1e-4) for i in range(16)]
    same = [torch.allclose(out[i], ref[i], atol=1e-4) for i in range(16)]
    assert all(f != s for f, s in zip(flipped, same, strict=True))  # each one or the other
    assert 2 <= sum(flipped) <= 14  # per-sample randomness, not one coin for the batch


def test_random_crop_takes_exact_pixel_windows() -> None:
    x = batch(12, 48)
    out = unnormalise(prep(["random_crop"], size=48, input_size=40).train(x, 0))
    ref = x.float() / 255
    offsets = set()
    for i in range(12):
        match = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.allclose(out[i], ref[i, :, dy : dy + 40, dx : dx + 40], atol=1e-4)
        ]
        assert len(match) == 1, f"sample {i} is not a pixel window"
        offsets.add(match[0])
    assert len(offsets) > 3  # different windows for different samples


def test_resized_crop_and_rotation_change_images() -> None:
    x = batch(8)
    ref = prep([]).eval(x)
    for recipe in (["resized_crop"], [{"rotation": 30}]):
        out = prep(recipe).train(x, 0)
        diff = (out - ref).abs().flatten(1).mean(1)
        assert (diff > 0.05).all(), recipe


def test_color_ops() -> None:
    x = batch(8)
    base = unnormalise(prep([]).eval(x))
    gray = unnormalise(prep([{"grayscale": 1.0}]).train(x, 0))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-4)
    assert torch.allclose(gray[:, 1], gray[:, 2], atol=1e-4)
    luma = sum(w * base[:, i] for i, w in enumerate(LUMA))
    assert torch.allclose(gray[:, 0], luma, atol=1e-4)

    bright = unnormalise(
        prep([{"color_jitter": {"brightness": 0.5, "contrast": 0, "saturation": 0}}]).train(x, 0)
    )
    ratio = bright.flatten(1).mean(1) / base.flatten(1).mean(1)
    assert (ratio - 1).abs().max() > 0.05 and ratio.std() > 0.02  # per-sample factors

    noisy = unnormalise(prep([{"gaussian_noise": 0.05}]).train(x, 0))
    resid = (noisy - base)[(base > 0.2) & (base < 0.8)]  # away from the clamp
    assert resid.std() == pytest.approx(0.05, rel=0.15)


def test_random_erasing_fills_a_rectangle_with_zero() -> None:
    x = batch(6)
    out = prep([{"random_erasing": {"p": 1.0, "scale": [0.1, 0.2]}}]).train(x, 0)
    zero = (out == 0).all(dim=1)  # (B, H, W): erased pixels are 0 in every channel
    frac = zero.flatten(1).float().mean(1)
    assert ((frac > 0.05) & (frac < 0.3)).all()
    for i in range(6):
        ys, xs = torch.nonzero(zero[i], as_tuple=True)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert box == len(ys)  # a filled rectangle


def test_downscale_blurs_only_the_samples_drawn() -> None:
    """p=1: every image loses high-frequency detail but keeps its mean colour; p=0 (or the
    full side) leaves the eval view untouched; the result equals shrinking and enlarging."""
    import torch.nn.functional as F

    x = batch(6)
    plain = prep([]).train(x, 0)
    low = prep([{"downscale": {"scale": [0.25, 0.25], "p": 1.0}}]).train(x, 0)
    assert torch.allclose(prep([{"downscale": {"p": 0.0}}]).train(x, 0), plain)
    assert torch.allclose(prep([{"downscale": [1.0, 1.0]}]).train(x, 0), plain)

    def detail(z: torch.Tensor) -> torch.Tensor:  # mean absolute neighbour difference
        return (z[..., 1:] - z[..., :-1]).abs().flatten(1).mean(1)

    assert (detail(low) < 0.6 * detail(plain)).all()
    assert torch.allclose(low.mean((2, 3)), plain.mean((2, 3)), atol=0.05)
    small = F.interpolate(x.float(), size=(10, 10), mode="area")
    want = F.interpolate(small, size=(40, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(unnormalise(low) * 255, want, atol=1e-2)
    half = prep([{"downscale": {"scale": [0.25, 0.25], "p": 0.5}}]).train(batch(64), 1)
    changed = ~torch.isclose(half, prep([]).train(batch(64), 1)).flatten(1).all(1)
    assert 16 <= int(changed.sum()) <= 48


def test_bad_input_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected a \(B, 3, H, W\) batch"):
        prep([]).train(torch.zeros(2, 40, 40, 3, dtype=torch.uint8))
