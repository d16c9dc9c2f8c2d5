"""Does a gender threshold chosen on validation faces narrow the women/men gap elsewhere?

The threshold on p_female that makes female and male recall equal is chosen on the
model's own UTKFace validation faces (the CV run's fold-``k`` validation split, never its
test fold, never FairFace), then applied unchanged to FairFace-540, both through the
predictor's face path (:func:`agegender.evaluate.photos.evaluate_photos`, misses count)::

    python benchmarks/gender_threshold.py --model accurate \\
        --folds runs/accurate_folds/folds.csv --fold 0 --val-fraction 0.15

Writes ``benchmarks/gender_threshold.md`` / ``.json``; ``--val-csv`` also writes those
validation faces as a label manifest, the ``--data`` of ``agegender calibrate``, which
writes the threshold into a model (the bundled ``accurate`` ships with it). The rule is
:func:`agegender.evaluate.calibrate.choose_threshold` (every distinct threshold, not a
grid); the recalls at it count a photo without a face as wrong.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from agegender.evaluate.calibrate import choose_threshold, recalls_at
    from agegender.evaluate.cv import fold_split
    from agegender.evaluate.photos import evaluate_photos
    from agegender.infer import Predictor

    sys.path.insert(0, str(REPO / "benchmarks"))
    import crossdata

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="accurate")
    ap.add_argument("--folds", required=True, help="folds.csv of the model's CV run")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0, help="the run's data.seed")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks"))
    ap.add_argument(
        "--val-csv",
        default=None,
        help="also write the validation faces as a label manifest (agegender calibrate --data)",
    )
    args = ap.parse_args(argv)

    folds = pd.read_csv(args.folds)
    split = fold_split(folds, args.fold, args.val_fraction, args.seed)
    val = folds[split["fold"].to_numpy() == 1].reset_index(drop=True)
    if args.val_csv:
        cols = [c for c in ("path", "gender", "age", "race") if c in val.columns]
        val[cols].astype({"race": "Int64"} if "race" in cols else {}).to_csv(
            args.val_csv, index=False
        )
    fairface = crossdata.load_set("fairface", argparse.Namespace(utk_folds=None, limit=None))
    predictor = Predictor.load(args.model, threads=args.threads)
    sets = {}
    for name, table in (("utkface validation", val[["path", "gender"]]), ("fairface", fairface)):
        frame = evaluate_photos(predictor, table)["predictions"]
        p = (  # the network's own output: the thresholds are on it, not on a model's report
            frame["p_female_raw"].to_numpy(float)
            if "p_female_raw" in frame
            else np.full(len(frame), np.nan)
        )
        sets[name] = (p, frame["gender"].astype(int).to_numpy())
    p_val, y_val = sets["utkface validation"]
    t = choose_threshold(y_val, p_val, "equal-recall", where="utkface validation")["threshold"]
    rows = [
        {"set": name, **recalls_at(y, p, thr), "photos": len(y)}
        for name, (p, y) in sets.items()
        for thr in (0.5, t)
    ]
    result = {
        "command": shlex.join(
            ["python", "benchmarks/gender_threshold.py", *(argv or sys.argv[1:])]
        ),
        "model": args.model,
        "fold": args.fold,
        "chosen_threshold": t,
        "rows": rows,
    }
    out = Path(args.out_dir)
    (out / "gender_threshold.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Gender threshold chosen on validation faces",
        "",
        f"Model `{args.model}`; threshold chosen on its UTKFace fold-{args.fold} validation "
        f"faces (equal female and male recall): **{t:.3f}**, then applied to FairFace-540 "
        f"unchanged. Command: `{result['command']}`.",
        "",
        "| set | photos | threshold | accuracy | female recall | male recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['photos']} | {r['threshold']:.3f} | {100 * r['accuracy']:.1f} % "
            f"| {100 * r['female_recall']:.1f} % | {100 * r['male_recall']:.1f} % |"
        )
    (out / "gender_threshold.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
