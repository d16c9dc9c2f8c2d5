"""Batched augmentation speed: ``agegender.data.augment`` vs ``kornia.augmentation``.

    python benchmarks/bench_augment.py [--config configs/efficientnet_lite0_imagenet.yaml]
                                       [--batch 64 256] [--px 64 96] [--threads 1 2]
                                       [--seconds 10] [--stats-images 2048] [--json PATH]

Both sides get the recipe of ``--config`` (its ``augment`` section), built the way training
builds it: :func:`agegender.config.load_config` (``--set data.size=PX data.input_size=PX``
for each size), :func:`agegender.artifact.make_meta` for the model's mean/std and
:class:`agegender.data.augment.Preprocess` (``.train(uint8_batch, rng)``, as
``LitAgeGender.on_after_batch_transfer`` calls it, ``channels_last`` from the config).
The Kornia side is the equivalent ``kornia.augmentation.AugmentationSequential`` on the
same uint8 batch (``x.float() / 255`` first, then the ops with per-sample parameters):

- ``resized_crop`` -> ``RandomResizedCrop(size, scale, ratio)``; ``random_crop`` ->
  ``RandomCrop(size, padding)``; ``hflip`` -> ``RandomHorizontalFlip(p)``;
- ``rotation`` -> ``RandomAffine(degrees, padding_mode=augment.padding_mode)`` (the recipe's
  reflection fill; ``RandomRotation`` has no padding mode and fills the corners with 0 —
  ``--kornia-rotation rotation`` measures that instead);
- ``color_jitter`` -> ``ColorJitter(b, c, s, order=(0, 1, 2))`` (torchvision's multiplicative
  factors in ``[1 - a, 1 + a]``, our fixed brightness-contrast-saturation order);
- ``grayscale`` -> ``RandomGrayscale(p)``; ``gaussian_noise`` -> ``RandomGaussianNoise``;
- then ``Normalize(mean, std)``, ``random_erasing`` -> ``RandomErasing`` (fills 0, the mean
  colour, after normalising, as ours), and the same ``channels_last`` layout at the end.

Timing: for each (batch, px, threads) cell, a few untimed warm-up calls of each, then rounds
that run both implementations on the same fresh random batch, alternating which goes first,
until the two together have run ``--seconds`` (at least ``--min-rounds`` rounds); images/s is
each one's images over its own total time. The inputs are random uint8 images, smooth colour
fields (a random 6x6 colour grid upsampled, plus pixel noise) rather than white noise, so
that the colour statistics below mean something.

Same-recipe check: at the config's own size, ``--stats-images`` augmented images of each
implementation (from the same inputs) give the per-channel mean and std, the mean per-image
std (contrast jitter), the mean per-image saturation (channel spread) and the fraction of
grayscale images; these should agree to within sampling noise and the few documented
differences (ours clamps once at the end, Kornia after each jitter step; Kornia's crop
samples with ``align_corners=True``). Shapes, dtypes and value ranges must be equal.

Prints Markdown tables; ``--json PATH`` also writes the figures. One default run takes about
2-3 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "efficientnet_lite0_imagenet.yaml"


def build_ours(config: Path, px: int):
    """The project's Preprocess for ``config``'s recipe at ``px`` (cache = input size)."""
    from agegender.artifact import make_meta
    from agegender.config import load_config
    from agegender.data.augment import Preprocess

    cfg = load_config(config, [f"data.size={px}", f"data.input_size={px}"])
    pre = make_meta(cfg, size=cfg.data.size, input_size=cfg.data.input_size, code_version="")[
        "preprocessing"
    ]
    ours = Preprocess(
        size=pre["resize"],
        input_size=pre["input_size"],
        mean=pre["mean"],
        std=pre["std"],
        recipe=cfg.augment,
        channels_last=cfg.trainer.channels_last,
    )
    return cfg, pre, ours


def build_kornia(cfg, pre: dict, rotation: str = "affine"):
    """The same recipe as a ``kornia.augmentation.AugmentationSequential``."""
    import kornia.augmentation as K
    import torch

    s = int(pre["input_size"])
    before, after = [], []
    for op in cfg.augment.recipe:
        name = op.op
        if name == "resized_crop":
            before.append(K.RandomResizedCrop((s, s), scale=op.scale, ratio=op.ratio, p=op.p))
        elif name == "random_crop":
            before.append(K.RandomCrop((s, s), padding=op.padding or None, p=op.p))
        elif name == "hflip":
            before.append(K.RandomHorizontalFlip(p=op.p))
        elif name == "rotation":
            if rotation == "rotation":
                before.append(K.RandomRotation(op.degrees, p=op.p))
            else:
                before.append(
                    K.RandomAffine(op.degrees, padding_mode=cfg.augment.padding_mode, p=op.p)
                )
        elif name == "color_jitter":
            before.append(
                K.ColorJitter(op.brightness, op.contrast, op.saturation, order=(0, 1, 2), p=op.p)
            )
        elif name == "grayscale":
            before.append(K.RandomGrayscale(p=op.p))
        elif name == "gaussian_noise":
            before.append(K.RandomGaussianNoise(std=op.std, p=op.p))
        elif name == "random_erasing":
            after.append(K.RandomErasing(scale=op.scale, ratio=op.ratio, value=0.0, p=op.p))
        else:  # pragma: no cover - a new op in the schema
            raise ValueError(f"no Kornia equivalent written for {name!r}")
    cropped = any(op.op in ("resized_crop", "random_crop") for op in cfg.augment.recipe)
    if not cropped and int(pre["resize"]) != s:
        before.insert(0, K.CenterCrop((s, s)))
    norm = K.Normalize(mean=torch.tensor(pre["mean"]), std=torch.tensor(pre["std"]))
    seq = K.AugmentationSequential(*before, norm, *after)
    fmt = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format

    def run(images: torch.Tensor) -> torch.Tensor:
        return seq(images.float().div_(255)).contiguous(memory_format=fmt)

    return run, seq


def random_batch(n: int, px: int, seed: int):
    """``n`` random uint8 ``(3, px, px)`` images: smooth colour fields plus pixel noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(
        torch.rand(n, 3, 6, 6, generator=g) * 255,
        size=(px, px),
        mode="bicubic",
        align_corners=False,
    )
    field += torch.randn(n, 3, px, px, generator=g) * 8
    return field.clamp_(0, 255).round_().to(torch.uint8)


def time_cell(
    ours, kornia_run, *, batch: int, px: int, seconds: float, min_rounds: int, warmup: int
):
    import numpy as np
    import torch

    def call_ours(x, i):
        return ours.train(x, np.random.default_rng([0, i]))

    impls = {"ours": call_ours, "kornia": lambda x, i: kornia_run(x)}
    spent = {k: 0.0 for k in impls}
    images = {k: 0 for k in impls}
    with torch.no_grad():
        x = random_batch(batch, px, seed=12345)
        for i in range(warmup):
            for f in impls.values():
                f(x, i)
        r = 0
        while r < min_rounds or sum(spent.values()) < seconds:
            x = random_batch(batch, px, seed=r)
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for k in order:
                t = time.perf_counter()
                impls[k](x, r)
                spent[k] += time.perf_counter() - t
                images[k] += batch
            r += 1
    return {k: images[k] / spent[k] for k in impls} | {"rounds": r}


class Summary:
    """Running output statistics of normalised batches (unnormalised to [0, 1] first)."""

    def __init__(self) -> None:
        self.n = 0
        self.pixels = 0
        self.total = self.squares = 0.0
        self.image_std: list = []
        self.saturation: list = []

    def add(self, y) -> None:
        flat = y.flatten(2).double()  # (n, 3, HW)
        self.n += flat.shape[0]
        self.pixels += flat.shape[0] * flat.shape[2]
        self.total = self.total + flat.sum(dim=(0, 2))
        self.squares = self.squares + (flat * flat).sum(dim=(0, 2))
        self.image_std.append(flat.flatten(1).std(dim=1))
        spread = flat.max(dim=1).values - flat.min(dim=1).values  # (n, HW)
        self.saturation.append(spread.mean(dim=1))

    def result(self) -> dict:
        import torch

        mean = self.total / self.pixels
        var = self.squares / self.pixels - mean * mean
        saturation = torch.cat(self.saturation)
        return {
            "mean": mean.tolist(),
            "std": var.clamp(min=0).sqrt().tolist(),
            "image_std": float(torch.cat(self.image_std).mean()),
            "saturation": float(saturation.mean()),
            "gray_fraction": float((saturation < 1e-4).double().mean()),
        }


def check_recipe(ours, kornia_run, pre: dict, *, px: int, images: int, batch: int = 256):
    """Shapes/dtypes/ranges must match; the output statistics should be close."""
    import numpy as np
    import torch

    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    lo, hi = (-mean / std).min().item(), ((1 - mean) / std).max().item()
    sums = {name: Summary() for name in ("input", "ours", "kornia")}
    info: dict[str, dict] = {}
    with torch.no_grad():
        for i in range(max(1, images // batch)):
            x = random_batch(batch, px, seed=10_000 + i)
            a = ours.train(x, np.random.default_rng([1, i]))
            b = kornia_run(x)
            sums["input"].add(ours.eval(x) * std + mean)
            for name, y in (("ours", a), ("kornia", b)):
                info.setdefault(name, {"shape": list(y.shape), "dtype": str(y.dtype)})
                info[name]["channels_last"] = y.is_contiguous(memory_format=torch.channels_last)
                info[name]["min"] = min(info[name].get("min", np.inf), float(y.min()))
                info[name]["max"] = max(info[name].get("max", -np.inf), float(y.max()))
                sums[name].add(y * std + mean)  # back to [0, 1] pixel units
    stats = {k: v.result() for k, v in sums.items()}
    same_layout = all(
        info["ours"][k] == info["kornia"][k] for k in ("shape", "dtype", "channels_last")
    )
    in_range = all(lo - 1e-4 <= info[k]["min"] and info[k]["max"] <= hi + 1e-4 for k in info)
    so, sk = stats["ours"], stats["kornia"]

    def rel(a: float, b: float) -> float:
        return abs(a / b - 1)

    close = (
        max(abs(a - b) for a, b in zip(so["mean"], sk["mean"], strict=True)) < 0.02
        and max(rel(a, b) for a, b in zip(so["std"], sk["std"], strict=True)) < 0.1
        and rel(so["image_std"], sk["image_std"]) < 0.1
        and rel(so["saturation"], sk["saturation"]) < 0.1
    )
    return {
        "px": px,
        "images": sums["ours"].n,
        "valid_range": [lo, hi],
        "outputs": info,
        "stats": stats,
        "same_shape_dtype_layout": same_layout,
        "within_range": in_range,
        "stats_close": close,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Recipe: `{result['config']}` — {result['recipe']}",
        "",
        "| batch | px | threads | ours img/s | Kornia img/s | Kornia / ours | rounds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cells"]:
        lines.append(
            f"| {c['batch']} | {c['px']} | {c['threads']} | {c['ours']:.0f} | "
            f"{c['kornia']:.0f} | {c['ratio']:.2f} | {c['rounds']} |"
        )
    lines.append(
        f"\nKornia / ours, geometric mean over the cells: **{result['ratio_geomean']:.2f}** "
        f"(adopt if ≥ 0.8: {'yes' if result['ratio_geomean'] >= 0.8 else 'no'})"
    )
    chk = result["check"]
    lines += [
        "",
        f"Same-recipe check at {chk['px']} px over {chk['images']} images "
        f"(pixel units, [0, 1]): shapes/dtypes/layout equal: {chk['same_shape_dtype_layout']}; "
        f"all outputs within [{chk['valid_range'][0]:.2f}, {chk['valid_range'][1]:.2f}]: "
        f"{chk['within_range']}; statistics close: {chk['stats_close']}",
        "",
        "| output | channel means | channel stds | per-image std | saturation | grayscale |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, s in chk["stats"].items():
        fmt = ", ".join
        lines.append(
            f"| {name} | {fmt(f'{v:.3f}' for v in s['mean'])} | "
            f"{fmt(f'{v:.3f}' for v in s['std'])} | {s['image_std']:.3f} | "
            f"{s['saturation']:.3f} | {s['gray_fraction']:.3f} |"
        )
    lines.append(
        f"\nLoad average {result['loadavg_before']} before, {result['loadavg_after']} after "
        f"({result['cpus']} CPUs); {result['seconds']:.0f} s."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--px", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--seconds", type=float, default=10.0, help="timed seconds per cell, both sides"
    )
    ap.add_argument("--min-rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls of each first")
    ap.add_argument("--stats-images", type=int, default=2048)
    ap.add_argument("--kornia-rotation", choices=["affine", "rotation"], default="affine")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    import kornia
    import numpy as np
    import torch

    torch.manual_seed(0)  # Kornia draws its parameters from torch's global generator
    start = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    cells = []
    built = {}
    for px in args.px:
        cfg, pre, ours = build_ours(args.config, px)
        kornia_run, _ = build_kornia(cfg, pre, args.kornia_rotation)
        built[px] = (cfg, pre, ours, kornia_run)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch:
                r = time_cell(
                    ours,
                    kornia_run,
                    batch=batch,
                    px=px,
                    seconds=args.seconds,
                    min_rounds=args.min_rounds,
                    warmup=args.warmup,
                )
                cell = {"batch": batch, "px": px, "threads": threads, **r}
                cell["ratio"] = r["kornia"] / r["ours"]
                cells.append(cell)
                print(
                    f"batch {batch} px {px} threads {threads}: ours {r['ours']:.0f}, "
                    f"kornia {r['kornia']:.0f} img/s",
                    file=sys.stderr,
                )
    cfg0, pre0, ours0, kornia0 = built[max(args.px)]
    torch.set_num_threads(max(args.threads))
    torch.manual_seed(1)  # the check's Kornia draws do not depend on the timed rounds
    check = check_recipe(ours0, kornia0, pre0, px=max(args.px), images=args.stats_images)
    result = {
        "config": str(args.config.resolve().relative_to(REPO))
        if args.config.resolve().is_relative_to(REPO)
        else str(args.config),
        "recipe": ", ".join(
            f"{op.op}({', '.join(f'{k}={v}' for k, v in op.model_dump().items() if k != 'op')})"
            for op in cfg0.augment.recipe
        )
        + f"; padding_mode={cfg0.augment.padding_mode}",
        "kornia_rotation": args.kornia_rotation,
        "mean": pre0["mean"],
        "std": pre0["std"],
        "channels_last": cfg0.trainer.channels_last,
        "cells": cells,
        "ratio_geomean": float(np.exp(np.mean([np.log(c["ratio"]) for c in cells]))),
        "check": check,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "kornia": kornia.__version__,
            "numpy": np.__version__,
        },
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "seconds": time.perf_counter() - start,
    }
    print(markdown(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
