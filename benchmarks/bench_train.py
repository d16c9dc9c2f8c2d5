"""Training speed: this engine vs a naive PIL + DataLoader loop, same model, same batch.

    python benchmarks/bench_train.py [--batches 30] [--batch-size 64] [--images 3000]
                                     [--threads N] [--only small64,small112,resnet18_112]
                                     [--variants] [--json]

For each case (the default small model at 64 and 112 px, ResNet-18 at 112 px) it measures
training images per second (forward + backward + optimiser step, warm-up batches excluded):

- ``engine``: :func:`agegender.train.train` itself — uint8 memmap cache, one read per
  batch, batched per-sample augmentation (resized crop, flip, colour jitter) on the model's
  device, Lightning loop; the figure is the Throughput callback's ``train/images_per_sec``
  (training batches only, validation excluded). The cache is built once beforehand and its
  build time is reported separately (it is paid once per dataset and size, not per epoch).
- ``naive``: the usual ImageFolder-style loop — a Dataset opening each JPEG with PIL and
  applying ``RandomResizedCrop, RandomHorizontalFlip, ColorJitter, ToTensor, Normalize``
  per image, ``DataLoader(num_workers=2, shuffle=True)``, and a plain PyTorch training
  loop with the same model, losses and AdamW.

``--variants`` adds engine runs of the small 64 px model without ``channels_last`` (the
engine default) and with ``bf16-mixed`` precision. ``--repeat N`` runs every measurement
N times, interleaved, and keeps the best (the machine is shared; best-of-N is the usual
guard against other processes' bursts). The data is ``--data``, else
``$AGEGENDER_DATA/utkface``, else ``<repo>/../shared/data/utkface``. Prints a Markdown
table (``--json``: JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "small64": ("small_resnet", 64),
    "small112": ("small_resnet", 112),
    "resnet18_112": ("resnet18", 112),
}


def default_data() -> Path:
    root = Path(os.environ.get("AGEGENDER_DATA", REPO.parent / "shared" / "data"))
    return root / "utkface"


def engine_config(data: Path, model: str, size: int, args: argparse.Namespace, extra=()) -> list:
    """``--set`` overrides that make configs/default.yaml this benchmark case."""
    n_batches = args.batches + args.warmup
    return [
        f"data.path={data}",
        f"data.limit={args.images}",
        f"data.size={size}",
        f"data.input_size={size}",
        "data.split=[0.9, 0.1]",
        f"model.name={model}",
        "train.epochs=1",
        f"train.batch_size={args.batch_size}",
        f"train.limit_train_batches={n_batches}",
        "train.limit_val_batches=1",
        "train.checkpoint_every_n_steps=0",
        "train.progress_bar=false",
        "logger.tensorboard=false",
        "logger.csv=false",
        "augment.recipe=[{resized_crop: {scale: [0.08, 1.0]}}, hflip,"
        " {color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4}}]",
        *([f"trainer.threads={args.threads}"] if args.threads else []),
        *extra,
    ]


class _WarmupThroughput:
    """Lightning callback: images/s over training batches after ``warmup`` batches."""

    def __new__(cls, warmup: int):
        from lightning.pytorch.callbacks import Callback

        class Impl(Callback):
            def __init__(self) -> None:
                self.t0 = None
                self.t1 = None
                self.images = 0
                self.batches = 0

            def on_train_batch_end(self, trainer, module, outputs, batch, idx) -> None:
                self.batches += 1
                now = time.perf_counter()
                if self.batches == warmup:
                    self.t0 = now
                elif self.batches > warmup:
                    self.images += int(batch["image"].shape[0])
                    self.t1 = now

            @property
            def rate(self) -> float:
                if not self.images or self.t0 is None:
                    return float("nan")
                return self.images / (self.t1 - self.t0)

        return Impl()


def run_engine(data: Path, model: str, size: int, args, extra=()) -> float:
    from agegender.train import train

    meter = _WarmupThroughput(args.warmup)
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        train(
            REPO / "configs" / "default.yaml",
            out / "run",
            overrides=engine_config(data, model, size, args, extra),
            callbacks=[meter],
            progress=False,
            printer=lambda s: None,
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return meter.rate


class PilFaces:
    """ImageFolder-style dataset: one JPEG per item, per-image PIL transforms."""

    def __init__(self, paths, genders, groups, transform) -> None:
        self.paths, self.genders, self.groups, self.transform = paths, genders, groups, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            x = self.transform(img.convert("RGB"))
        return x, self.genders[i], self.groups[i]


def run_naive(table, model_name: str, size: int, args) -> float:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from agegender.models import TaskSpec, create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(model_name, TaskSpec(gender=True, age="groups"), input_size=size)
    cfg = model.default_cfg
    tf = T.Compose(
        [
            T.RandomResizedCrop(size, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    ds = PilFaces(
        table["path"].tolist(),
        table["gender"].astype(int).tolist(),
        table["age_group"].astype(int).tolist(),
        tf,
    )
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        persistent_workers=False,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    images, t0 = 0, None
    for done, (x, g, a) in enumerate(loader, start=1):
        out = model(x)
        loss = 0.5 * F.cross_entropy(out["gender"], g) + 0.5 * F.cross_entropy(out["age"], a)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if done == args.warmup:
            t0 = time.perf_counter()
        elif done > args.warmup:
            images += x.shape[0]
        if done >= args.batches + args.warmup:
            break
    return images / (time.perf_counter() - t0) if t0 and images else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=3000, help="faces used (seeded sample)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    ap.add_argument("--only", default=",".join(CASES), help=f"cases: {', '.join(CASES)}")
    ap.add_argument("--variants", action="store_true", help="+ NCHW / bf16 engine rows")
    ap.add_argument("--repeat", type=int, default=1, help="best of N interleaved runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    data = args.data or default_data()
    if not data.is_dir():
        print(f"error: UTKFace not found at {data} (set AGEGENDER_DATA or --data)", file=sys.stderr)
        return 2
    need = (args.batches + args.warmup) * args.batch_size
    if args.images < need / 0.9:
        args.images = int(need / 0.9) + args.batch_size

    import torch

    from agegender.data.cache import build_cache
    from agegender.data.readers import read_dataset

    table = read_dataset(data).table
    table = table.sample(n=min(args.images, len(table)), random_state=0).sort_index()
    table = table.reset_index(drop=True)
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        print(f"error: unknown case(s) {unknown}; choose from {list(CASES)}", file=sys.stderr)
        return 2

    cache_times = {}
    for size in sorted({CASES[c][1] for c in cases}):
        t = time.perf_counter()
        cache = build_cache(table, size, progress=False)
        cache_times[size] = {
            "seconds": round(time.perf_counter() - t, 2),
            "reused": cache.reused,
            "images": len(cache),
        }

    rows = []
    for case in cases:
        model, size = CASES[case]
        engine = naive = float("-inf")
        for _ in range(max(1, args.repeat)):
            engine = max(engine, run_engine(data, model, size, args))
            naive = max(naive, run_naive(table, model, size, args))
        rows.append(
            {
                "case": case,
                "model": model,
                "size": size,
                "engine_img_s": round(engine, 1),
                "naive_img_s": round(naive, 1),
                "speedup": round(engine / naive, 2),
            }
        )
    if args.variants and "small64" in cases:
        model, size = CASES["small64"]
        for name, extra in (
            ("NCHW (channels_last off)", ["trainer.channels_last=false"]),
            ("bf16-mixed", ["train.precision=bf16-mixed"]),
        ):
            rate = max(run_engine(data, model, size, args, extra) for _ in range(args.repeat))
            rows.append(
                {
                    "case": f"small64 + {name}",
                    "model": model,
                    "size": size,
                    "engine_img_s": round(rate, 1),
                    "naive_img_s": None,
                    "speedup": None,
                }
            )

    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads or torch.get_num_threads(),
            "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "repeat": args.repeat,
        "images": len(table),
        "cache_build": cache_times,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["machine"]
    print(
        f"Training throughput, batch {args.batch_size}, {args.batches} timed batches after "
        f"{args.warmup} warm-up, best of {args.repeat}; {m['cores']} cores, "
        f"torch {m['torch']}, {m['threads']} threads, load avg {m['load_avg_1min']}\n"
    )
    print("| case | model | px | engine img/s | naive PIL img/s | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        naive = "" if r["naive_img_s"] is None else f"{r['naive_img_s']:.1f}"
        speed = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(
            f"| {r['case']} | {r['model']} | {r['size']} | {r['engine_img_s']:.1f} | "
            f"{naive} | {speed} |"
        )
    print()
    for size, c in cache_times.items():
        how = "reused" if c["reused"] else "built"
        print(f"cache {size}px: {how} in {c['seconds']} s for {c['images']} images (once)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
