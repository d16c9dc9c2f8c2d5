"""How far between the frozen-backbone model and the fine-tuned one? (WiSE-FT)

For a run that trained the heads on a frozen backbone first (its ``epoch_0.ckpt``, kept by
``train.keep_epoch_checkpoints``) and then fine-tuned (``best.ckpt``), every model
``(1 - alpha) * start + alpha * end`` (:func:`agegender.artifact.interpolate_models`, what
``agegender export --interpolate`` writes) is scored on

- the run's own validation faces (a label manifest such as ``fold0_val.csv``): gender
  accuracy at 0.5 and at the threshold that equalises women's and men's recall there,
  ROC-AUC, log loss, age MAE;
- optionally a dataset the run never saw (``--unseen``, e.g. CelebA-10k for a model trained
  on UTKFace alone): gender accuracy at that validation threshold, ROC-AUC, women's and men's
  recall. It stands in for photos unlike the training faces when choosing alpha, so that
  FairFace, the cross-dataset test set, is never used to choose.

Each photo goes through the predictor's face path once (BlazeFace, aligned to the model's
framing, the largest face); every alpha classifies the same faces. Photos without a face
are left out of every row alike (their count is printed)::

    python benchmarks/wise_ft.py runs/xd_cv/fold_0/checkpoints \\
        --val runs/fold0_val.csv --unseen celeba --alphas 0 0.25 0.5 0.75 1 --out runs/wise_xd

Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _faces(predictor, table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    batch, owners = predictor.face_batch(list(table["path"]), largest=True)
    return batch, table.iloc[owners].reset_index(drop=True)


def _score(predictor, batch: np.ndarray, labels: pd.DataFrame, threshold: float | None):
    from sklearn.metrics import log_loss, roc_auc_score

    from agegender.evaluate.calibrate import choose_threshold, recalls_at

    probs = {k: [] for k in ("gender_probs", "age_probs")}
    for i in range(0, len(batch), 256):
        out = predictor.classify(batch[i : i + 256])
        for k in probs:
            if k in out:
                probs[k].append(out[k])
    p = np.concatenate(probs["gender_probs"])[:, 1]
    y = labels["gender"].to_numpy(int)
    row = {
        "faces": len(y),
        "accuracy_at_0.5": recalls_at(y, p, 0.5)["accuracy"],
        "roc_auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))),
    }
    if threshold is None:
        threshold = float(choose_threshold(y, p, "equal-recall", where="validation")["threshold"])
    at = recalls_at(y, p, threshold)
    row.update(
        threshold=threshold,
        accuracy=at["accuracy"],
        female_recall=at["female_recall"],
        male_recall=at["male_recall"],
    )
    if probs["age_probs"] and "age" in labels and labels["age"].notna().any():
        ages = np.concatenate(probs["age_probs"]) @ np.arange(probs["age_probs"][0].shape[1])
        known = labels["age"].notna().to_numpy()
        row["age_mae"] = float(np.abs(ages[known] - labels["age"].to_numpy(float)[known]).mean())
    return row


def main(argv: list[str] | None = None) -> int:
    import torch

    from agegender.artifact import interpolate_models, load_model
    from agegender.config.paths import default_data_root
    from agegender.data.readers import read_table
    from agegender.infer import Predictor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", help="the run's checkpoints/ folder (epoch_0.ckpt, best.ckpt)")
    ap.add_argument("--start", default="epoch_0.ckpt")
    ap.add_argument("--end", default="best.ckpt")
    ap.add_argument("--val", required=True, help="validation label manifest (csv)")
    ap.add_argument("--unseen", default=None, help="a dataset folder under the data root")
    ap.add_argument("--unseen-limit", type=int, default=None)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="OUT.md and OUT.json are written")
    ap.add_argument("--note", default=None, help="a paragraph for the end of OUT.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    folder = Path(args.checkpoints)
    start, end = load_model(folder / args.start), load_model(folder / args.end)
    started = time.perf_counter()
    face_path = Predictor.from_module(end[0], end[1], runtime="torch")
    tables = {"validation": read_table(args.val)[1]}
    if args.unseen:
        table = read_table(default_data_root() / args.unseen)[1]
        if args.unseen_limit:
            table = table.sample(n=min(args.unseen_limit, len(table)), random_state=0)
        tables[args.unseen] = table.reset_index(drop=True)
    sets = {name: _faces(face_path, table) for name, table in tables.items()}
    for name, (batch, _) in sets.items():
        print(f"{name}: {len(batch)} faces of {len(tables[name])} photos", flush=True)
    rows = []
    for alpha in args.alphas:
        model, meta = interpolate_models(start, end, alpha)
        predictor = Predictor.from_module(model, meta, runtime="torch", detector="none")
        val = _score(predictor, *sets["validation"], threshold=None)
        row = {"alpha": alpha, "validation": val}
        if args.unseen:
            row[args.unseen] = _score(predictor, *sets[args.unseen], threshold=val["threshold"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]),
        "start": str(folder / args.start),
        "end": str(folder / args.end),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    lines = [
        "# WiSE-FT: the frozen-backbone model, the fine-tuned one, and the models between",
        "",
        f"`{result['command']}`",
        "",
        "alpha 0 is the heads on the frozen backbone (start), 1 the fine-tuned model (end).",
        "Validation: accuracy at the threshold that equalises women's and men's recall there;"
        " the unseen set is scored at that same threshold.",
        "",
    ]
    head = "| alpha | val acc | val AUC | val log loss | val MAE | threshold |"
    sep = "|---:|---:|---:|---:|---:|---:|"
    if args.unseen:
        head += f" {args.unseen} acc | {args.unseen} AUC | {args.unseen} women / men |"
        sep += "---:|---:|---:|"
    lines += [head, sep]
    for r in rows:
        v = r["validation"]
        line = (
            f"| {r['alpha']:g} | {v['accuracy']:.2%} | {v['roc_auc']:.4f} | {v['log_loss']:.4f}"
            f" | {v.get('age_mae', float('nan')):.2f} | {v['threshold']:.3f} |"
        )
        if args.unseen:
            u = r[args.unseen]
            line += (
                f" {u['accuracy']:.2%} | {u['roc_auc']:.4f} |"
                f" {u['female_recall']:.1%} / {u['male_recall']:.1%} |"
            )
        lines.append(line.replace("%", " %"))
    if args.note:
        lines += ["", f"**Note:** {args.note}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
