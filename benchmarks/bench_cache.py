"""Image cache speed: build it once, then iterate batches from it vs decoding JPEGs with PIL.

    python benchmarks/bench_cache.py [--data PATH] [--size 64] [--limit 5000] [--json]

Reports, for the same N images (a seeded sample of the dataset):

1. ``build (cold)``: images/s to decode every image into a fresh cache (temporary cache
   dir; the files themselves may already be in the OS page cache);
2. ``reuse``: the time to find the finished cache again (no decoding);
3. ``cache -> float batches``: one shuffled pass in batches of 256, each batch
   ``torch.from_numpy(images[rows]).float().div(255).permute(0, 3, 1, 2)``;
4. ``PIL + DataLoader``: one shuffled pass of the usual ImageFolder-style pipeline
   (a Dataset that opens each JPEG with PIL, ``Resize``, ``ToTensor``; ``DataLoader`` with
   ``num_workers=2``, batch 256), which is what every epoch costs without the cache.

The data is found through ``--data``, else ``$AGEGENDER_DATA/utkface``, else
``<repo>/../shared/data/utkface``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    root = Path(os.environ.get("AGEGENDER_DATA", REPO.parent / "shared" / "data"))
    return root / "utkface"


def iterate_cache(images: np.ndarray, batch: int, seed: int = 0) -> tuple[int, float]:
    import torch

    order = np.random.default_rng(seed).permutation(len(images))
    start = time.perf_counter()
    seen = 0
    for s in range(0, len(order), batch):
        rows = np.sort(order[s : s + batch])  # sorted rows read the memmap in file order
        # uint8 -> float before the permute: converting the channels-last block is ~2x
        # faster than converting a permuted (strided) view; the result is NCHW with
        # channels-last strides, which every torch op and conv accepts
        x = torch.from_numpy(np.take(images, rows, axis=0)).float().div_(255)
        x = x.permute(0, 3, 1, 2)
        seen += x.shape[0]
    return seen, time.perf_counter() - start


class JpegDataset:
    """The plain PIL pipeline: open, convert to RGB, Resize, ToTensor."""

    def __init__(self, paths: list[str], size: int):
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose(
            [transforms.Resize((size, size)), transforms.ToTensor()]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def iterate_pil(paths: list[str], size: int, batch: int, workers: int) -> tuple[int, float]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        JpegDataset(paths, size),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    seen = 0
    for x in loader:
        seen += x.shape[0]
    return seen, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default UTKFace)")
    ap.add_argument("--format", default="auto", help="dataset layout (default: auto)")
    ap.add_argument("--size", type=int, default=64, help="cached image side (px)")
    ap.add_argument("--limit", type=int, default=5000, help="images to use (0 = all)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None, help="cache build processes")
    ap.add_argument("--loader-workers", type=int, default=2, help="DataLoader num_workers")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)

    from agegender.data.cache import build_cache
    from agegender.data.parallel import default_workers
    from agegender.data.readers import read_dataset

    data = args.data or default_data()
    if not data.exists():
        sys.exit(f"error: no data at {data} (pass --data or set AGEGENDER_DATA)")
    table = read_dataset(data, args.format).table
    if args.limit and args.limit < len(table):
        table = table.sample(n=args.limit, random_state=0).sort_index()
    table = table.reset_index(drop=True)
    n = len(table)
    workers = args.workers or default_workers()

    rows = []
    with tempfile.TemporaryDirectory(prefix="agegender-bench-cache-") as tmp:
        t = time.perf_counter()
        cache = build_cache(table, args.size, cache_dir=tmp, workers=workers, progress=False)
        build_s = time.perf_counter() - t
        rows.append(("build cache (cold, decode once)", n, build_s))
        t = time.perf_counter()
        again = build_cache(table, args.size, cache_dir=tmp, progress=False)
        reuse_s = time.perf_counter() - t
        assert again.reused and len(again) == n
        seen, s = iterate_cache(cache.images, args.batch)
        rows.append((f"cache -> float batches of {args.batch}", seen, s))
        failed = cache.failed
    seen, s = iterate_pil(table["path"].tolist(), args.size, args.batch, args.loader_workers)
    rows.append((f"PIL + DataLoader (num_workers={args.loader_workers})", seen, s))

    import torch

    result = {
        "data": str(data),
        "images": n,
        "size": args.size,
        "batch": args.batch,
        "build_workers": workers,
        "failed": failed,
        "reuse_seconds": round(reuse_s, 3),
        "results": [
            {
                "pipeline": name,
                "images": k,
                "seconds": round(sec, 3),
                "images_per_second": round(k / sec, 1),
            }
            for name, k, sec in rows
        ],  # fmt: skip
        "cpus": default_workers(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"\n{n} images from {data} at {args.size}x{args.size}, {default_workers()} CPUs\n")
    print("| pipeline | images | seconds | images/s |")
    print("| --- | ---: | ---: | ---: |")
    for r in result["results"]:
        print(
            f"| {r['pipeline']} | {r['images']} | {r['seconds']:.2f} | "
            f"{r['images_per_second']:,.0f} |"
        )
    print(f"\nreusing the finished cache took {reuse_s:.3f} s (no decoding); {failed} failed")
    cache_ips = result["results"][1]["images_per_second"]
    pil_ips = result["results"][2]["images_per_second"]
    print(f"cache iteration is {cache_ips / pil_ips:.0f}x the PIL DataLoader pass")
    if args.json:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
