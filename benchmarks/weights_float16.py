"""What storing the bundled ``.pt`` weights in float16 changes: the same photos through the
predictor (torch runtime) with the former float32 file and the shipped float16 file, and
through the shipped ONNX file, face by face.

    python benchmarks/weights_float16.py                  # 500 UTKFace photos + examples/
    python benchmarks/weights_float16.py --faces 50 --models accurate

The float32 files are read from git (``--reference``: the last commit that shipped them);
the float16 ones are the package's own. For each pair of runs: the largest change of the
reported P(female) and of the network's own P(female), gender decisions alike, the largest
and mean change of the age in years, age groups alike. Writes ``weights_float16.json`` and
``weights_float16.md`` beside this script. UTKFace photos are a seeded random sample (the
models trained on some of them: this measures agreement between two files, not accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
#: The last commit whose bundled ``.pt`` files hold float32 weights.
FLOAT32_REV = "0021916"
PAIRS = (
    ("float32 .pt", "float16 .pt"),
    ("float32 .pt", "ONNX"),
    ("float16 .pt", "ONNX"),
)


def photos(n: int, seed: int) -> list[str]:
    """``examples/`` and ``n`` UTKFace photos (a seeded sample, sorted)."""
    from agegender.config.paths import default_data_root

    ex = sorted(str(p) for p in (REPO / "examples").glob("*.jpg"))
    utk = sorted(str(p) for p in (default_data_root() / "utkface").glob("*.jpg"))
    if len(utk) < n:
        raise SystemExit(f"error: {default_data_root() / 'utkface'}: fewer than {n} photos")
    pick = np.random.default_rng(seed).choice(len(utk), n, replace=False)
    return ex + sorted(utk[i] for i in pick)


def faces(model: str | Path, runtime: str, paths: list[str]) -> list[dict]:
    """One row per photo: its faces' reported and network P(female), gender, age, group."""
    from agegender import Predictor

    p = Predictor.load(model, runtime=runtime, threads=1)
    rows = []
    for res in p.predict_paths(paths):
        rows.append(
            {
                "n": len(res.faces),
                "p": [f.p_female for f in res.faces],
                "raw": [f.p_female_raw for f in res.faces],
                "gender": [f.gender for f in res.faces],
                "age": [f.age for f in res.faces],
                "group": [f.age_group for f in res.faces],
            }
        )
    return rows


def compare(a: list[dict], b: list[dict]) -> dict:
    """Face-by-face differences of two runs over the same photos (same detector, so the
    same faces; a photo whose face count differs is counted, not compared)."""
    same = [(x, y) for x, y in zip(a, b, strict=True) if x["n"] == y["n"]]

    def cat(key: str, run: int) -> np.ndarray:
        return np.array([v for pair in same for v in pair[run][key]])

    dp = np.abs(cat("p", 0).astype(float) - cat("p", 1).astype(float))
    draw = np.abs(cat("raw", 0).astype(float) - cat("raw", 1).astype(float))
    dage = np.abs(cat("age", 0).astype(float) - cat("age", 1).astype(float))
    return {
        "faces": len(dp),
        "photos_with_other_face_count": len(a) - len(same),
        "max_abs_dp_female": float(dp.max()),
        "mean_abs_dp_female": float(dp.mean()),
        "max_abs_dp_female_network": float(draw.max()),
        "gender_changed": int((cat("gender", 0) != cat("gender", 1)).sum()),
        "max_abs_d_age": float(dage.max()),
        "mean_abs_d_age": float(dage.mean()),
        "age_group_changed": int((cat("group", 0) != cat("group", 1)).sum()),
    }


def render(data: dict) -> str:
    out = [
        "# Bundled `.pt` weights in float16",
        "",
        "The bundled `default.pt` and `accurate.pt` store their weights in float16 (cast back "
        'to float32 on load, `save_torch_model(..., dtype="float16")`): half the file. '
        "What that changes, face by face, on the same photos through the predictor "
        f"(torch runtime; BlazeFace; {data['photos']} photos: `examples/` and a seeded "
        "sample of UTKFace):",
        "",
        "| model | compared | faces | largest \\|dP(female)\\| reported | network | "
        "gender changed | largest \\|d age\\| (years) | mean | age group changed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, res in data["models"].items():
        for pair in res["pairs"]:
            c = pair["diff"]
            out.append(
                f"| {name} | {pair['a']} vs {pair['b']} | {c['faces']} | "
                f"{c['max_abs_dp_female']:.5f} | {c['max_abs_dp_female_network']:.5f} | "
                f"{c['gender_changed']} | {c['max_abs_d_age']:.3f} | "
                f"{c['mean_abs_d_age']:.4f} | {c['age_group_changed']} |"
            )
    out += [
        "",
        "| model | float32 .pt (MB) | float16 .pt (MB) | ONNX (MB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, res in data["models"].items():
        s = res["bytes"]
        out.append(
            f"| {name} | {s['float32_pt'] / 1e6:.1f} | {s['float16_pt'] / 1e6:.1f} | "
            f"{s['onnx'] / 1e6:.1f} |"
        )
    out += [
        "",
        f"The float32 files are those of commit `{data['reference']}`. `default.onnx` is int8, "
        "so its rows against either `.pt` show the int8 quantization, not float16; "
        "`accurate.onnx` is the float32 export of the float32 weights.",
        "",
        f"Command: `{data['command']}` ({data['seconds']:.0f} s on {data['machine']}).",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "accurate"])
    ap.add_argument("--faces", type=int, default=500, help="UTKFace photos (plus examples/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", default=FLOAT32_REV, help="git commit of the float32 files")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from agegender.bundled import WEIGHTS_DIR

    t0 = time.perf_counter()
    paths = photos(args.faces, args.seed)
    data: dict = {
        "reference": args.reference,
        "photos": len(paths),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rel = (WEIGHTS_DIR / f"{name}.pt").relative_to(REPO)
            old = Path(tmp) / f"{name}.pt"
            old.write_bytes(
                subprocess.run(
                    ["git", "show", f"{args.reference}:{rel.as_posix()}"],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                ).stdout
            )
            runs = {
                "float32 .pt": faces(old, "torch", paths),
                "float16 .pt": faces(name, "torch", paths),
                "ONNX": faces(name, "onnxruntime", paths),
            }
            data["models"][name] = {
                "bytes": {
                    "float32_pt": old.stat().st_size,
                    "float16_pt": (WEIGHTS_DIR / f"{name}.pt").stat().st_size,
                    "onnx": (WEIGHTS_DIR / f"{name}.onnx").stat().st_size,
                },
                "pairs": [{"a": a, "b": b, "diff": compare(runs[a], runs[b])} for a, b in PAIRS],
            }
            print(name, json.dumps(data["models"][name], indent=1), flush=True)
    data["seconds"] = time.perf_counter() - t0
    data["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, 1 thread"
    data["command"] = "python benchmarks/weights_float16.py " + shlex.join(argv or sys.argv[1:])
    data["command"] = data["command"].strip()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "weights_float16.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out_dir / "weights_float16.md").write_text(render(data))
    print(f"wrote {args.out_dir / 'weights_float16.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
