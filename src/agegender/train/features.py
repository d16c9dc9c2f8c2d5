"""The frozen-prefix feature cache (``model.precompute_blocks: N``).

When the first N backbone blocks stay frozen for the whole run, their output for a face
never changes: it is computed once (eval mode, no gradient), for the face and its mirror
image, stored as float16, and training runs only the blocks after them and the heads. For
dlib's face ResNet at 150 px, the lower levels cost most of the forward pass at the largest
maps, so the top levels can be fine-tuned for a fraction of a full pass.

The horizontal flip is the stored mirror view, drawn per sample with ``hflip``'s
probability. Any other augmentation changes the stored input, so it can only be drawn in
advance: ``model.precompute_augmented: N`` also stores N draws of the whole
``augment.recipe`` per face (``Preprocess.train`` with a seed per draw and batch, so they
are reproducible), and a training sample reads one of the stored views at random. Each
epoch then sees one of a few fixed augmentations of a face instead of a fresh one: cheaper
than a full pass by the stored blocks' share, at N+2 times the disk.

The features are kept on disk beside the image cache (``features-<key>.npy``), keyed by the
faces (paths in order), the prefix's weights, N, the input size and the normalisation, so a
cross-validation's folds, which share faces and starting weights, compute them once.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FEATURES_VERSION", "precompute_features"]

FEATURES_VERSION = 1


def _key(
    paths: list[str],
    prefix: torch.nn.Module,
    blocks: int,
    preprocess: Any,
    flip: bool,
    draws: int,
    seed: int,
) -> str:
    mean, std = list(map(float, preprocess.mean)), list(map(float, preprocess.std))
    text = (
        f"agegender-features v{FEATURES_VERSION} blocks={blocks} flip={flip} "
        f"size={preprocess.size} input={preprocess.input_size} mean={mean} std={std}"
    )
    if draws:  # (absent without draws: the files stored before draws existed stay valid)
        text += f" draws={draws} seed={seed} recipe={preprocess.recipe.model_dump_json()}"
    h = hashlib.sha256(f"{text}\n".encode())
    for p in paths:
        h.update(p.encode() + b"\n")
    for name, t in prefix.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


@torch.no_grad()
def _compute(
    model: Any,
    images: np.ndarray,
    rows: np.ndarray,
    blocks: int,
    preprocess: Any,
    flip: bool,
    draws: int,
    seed: int,
    batch_size: int,
    printer: Callable[[str], Any],
) -> np.ndarray:
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    views = (2 if flip else 1) + draws
    start = last = time.perf_counter()
    try:
        for i in range(0, len(rows), batch_size):
            pixels = np.ascontiguousarray(images[rows[i : i + batch_size]])
            raw = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            x = preprocess.eval(raw)
            feats = [model.forward_prefix(blocks, x)]
            if flip:
                feats.append(model.forward_prefix(blocks, torch.flip(x, dims=[3])))
            for d in range(draws):  # a pure function of (seed, draw, first row)
                aug = preprocess.train(raw, np.random.default_rng([seed, d, i]))
                feats.append(model.forward_prefix(blocks, aug))
            f = torch.stack(feats, 1).to(torch.float16).contiguous().numpy()
            if out is None:
                out = np.empty((len(rows), views, *f.shape[2:]), np.float16)
            out[i : i + len(f)] = f
            now = time.perf_counter()
            if now - last > 60:
                done = i + len(f)
                printer(
                    f"features: {done:,}/{len(rows):,} faces, {done / (now - start):.0f} faces/s"
                )
                last = now
    finally:
        model.train(was_training)
    assert out is not None
    return out


def precompute_features(
    model: Any,
    images: np.ndarray,
    cache_rows: np.ndarray,
    paths: list[str],
    blocks: int,
    preprocess: Any,
    *,
    flip: bool,
    cache_dir: str | Path | None,
    draws: int = 0,
    seed: int = 0,
    unfrozen_last_n: int | None = None,
    batch_size: int = 64,
    printer: Callable[[str], Any] = print,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(features, info)``: ``features[i]`` ``(views, C, h, w)`` float16 is the output of
    ``model``'s first ``blocks`` backbone blocks for table row ``i`` (``images[cache_rows[i]]``
    through ``preprocess.eval``; view 1 is the mirror image when ``flip``; the last
    ``draws`` views are draws of ``preprocess.train``, seeded by ``seed``). Reused from
    ``cache_dir`` (default: the image cache's root) when the faces and weights match.
    ``unfrozen_last_n``: the blocks a later unfreeze trains, which must not be stored."""
    from agegender.data.cache import default_cache_dir

    n_blocks = len(model.backbone_blocks())
    if not 1 <= blocks < n_blocks + 1:
        raise ValueError(
            f"model.precompute_blocks: {blocks}, but model {model.name!r} has {n_blocks} "
            "backbone blocks"
        )
    if unfrozen_last_n is not None and blocks > n_blocks - unfrozen_last_n:
        raise ValueError(
            f"model.precompute_blocks: {blocks} stored blocks, but model.unfreeze_last_n "
            f"({unfrozen_last_n} of {n_blocks}) would unfreeze some of them"
        )
    prefix = torch.nn.ModuleList(model.backbone_blocks()[:blocks])
    key = _key(paths, prefix, blocks, preprocess, flip, draws, seed)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = root / f"features-{key}.npy"
    info: dict[str, Any] = {"blocks": blocks, "flip": flip, "draws": draws, "file": str(path)}
    if path.is_file():
        feats = np.load(path, mmap_mode="r")
        if len(feats) == len(cache_rows):
            info.update(reused=True, shape=list(feats.shape[1:]), seconds=0.0)
            return feats, info
    start = time.perf_counter()
    feats = _compute(
        model,
        images,
        np.asarray(cache_rows),
        blocks,
        preprocess,
        flip,
        draws,
        seed,
        batch_size,
        printer,
    )
    seconds = time.perf_counter() - start
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    info.update(
        reused=False,
        shape=list(feats.shape[1:]),
        seconds=round(seconds, 1),
        faces_per_second=round(len(feats) / max(seconds, 1e-9), 1),
    )
    return np.load(path, mmap_mode="r"), info
