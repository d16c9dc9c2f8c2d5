"""Where does the FairFace women gap come from? A probe on dlib's frozen face descriptor.

dlib's 128-d descriptor (face weights, frozen, never fine-tuned) of every training face,
then a plain logistic regression for gender trained on UTKFace alone, on CelebA-10k alone
and on both: the training split of configs/face/dlib_frozen.yaml without a CV fold (85 % of
UTKFace, grouped by the duplicate audit, and CelebA-10k's training identities). Each is
calibrated to equal female and male recall on the other 15 % of UTKFace, then scored on
FairFace-540 through the shipped face path (the same 150 px chips the dlib models see),
misses counted as errors.

This is a diagnosis, not a model: nothing here is chosen on FairFace, and nothing ships.

    python benchmarks/descriptor_probe.py            # -> benchmarks/descriptor_probe.{md,json}
    python benchmarks/descriptor_probe.py --render   # the .md again from the .json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "face" / "dlib_frozen.yaml"


def descriptors(net, batches) -> np.ndarray:
    """dlib's 128-d descriptor of each normalised batch ``(n, 3, 150, 150)``, stacked."""
    out = []
    with torch.no_grad():
        for batch in batches:
            out.append(net.descriptor(torch.from_numpy(np.ascontiguousarray(batch))).numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from agegender.config import load_config
    from agegender.config.paths import default_data_root
    from agegender.data.readers import read_table
    from agegender.evaluate.calibrate import choose_threshold
    from agegender.evaluate.metrics import age_split_scores, gender_bin_cells
    from agegender.infer import Predictor
    from agegender.models.dlib_resnet import DlibResNet, face_weights_path, load_dlib_weights
    from agegender.readout import gender_labels
    from agegender.train.data import prepare_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--render", action="store_true", help="only rewrite the .md from the .json in --out-dir"
    )
    args = ap.parse_args(argv)
    if args.render:
        page = json.loads((args.out_dir / "descriptor_probe.json").read_text())
        (args.out_dir / "descriptor_probe.md").write_text(markdown(page["rows"], page["meta"]))
        return 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    net = DlibResNet("embedding").eval()
    load_dlib_weights(net, face_weights_path())
    # the shipped face path (BlazeFace, dlib's 150 px chip, dlib's normalisation)
    predictor = Predictor.load("accurate", detector="blazeface", threads=args.threads)

    data = prepare_data(load_config(CONFIG))
    table = data.table
    rows_ = data.cache_rows
    feats = descriptors(
        net,
        (
            predictor.preprocess(list(np.asarray(data.images[rows_[i : i + 256]])))
            for i in range(0, len(rows_), 256)
        ),
    )
    source = table["source"].to_numpy() if "source" in table else np.full(len(table), "utkface")
    gender = table["gender"].to_numpy()
    train, val = data.splits.train, data.splits.val
    val_utk = val[source[val] == "utkface"]

    ff = read_table(default_data_root() / "fairface-540")[1]
    batch, owner = predictor.face_batch(ff["path"].tolist(), largest=True)
    ff_feats = descriptors(net, [batch])
    predictor.close()

    rows = []
    for name, keep in (
        ("UTKFace", lambda s: s == "utkface"),
        ("CelebA-10k", lambda s: s != "utkface"),
        ("UTKFace + CelebA-10k", lambda s: np.ones(len(s), bool)),
    ):
        idx = train[keep(source[train])]
        idx = idx[gender[idx] >= 0]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        clf.fit(feats[idx], gender[idx])
        p_val = clf.predict_proba(feats[val_utk])[:, 1]
        thr = choose_threshold(gender[val_utk], p_val, "equal-recall")["threshold"]
        val_acc = float(np.mean(gender_labels(p_val, thr) == gender[val_utk]))
        pred = np.full(len(ff), -1)
        pred[owner] = gender_labels(clf.predict_proba(ff_feats)[:, 1], thr)
        frame = ff.assign(pred_gender=pred, face_found=pred >= 0)
        correct = (frame["pred_gender"] == frame["gender"]) & frame["face_found"]
        split = age_split_scores(gender_bin_cells(frame))
        female = frame["gender"] == 1
        rows.append(
            {
                "train": name,
                "faces": int(len(idx)),
                "threshold": float(thr),
                "utkface_val_accuracy": val_acc,
                "fairface_accuracy_all": float(correct.mean()),
                "fairface_recall_female_all": float(correct[female].mean()),
                "fairface_recall_male_all": float(correct[~female].mean()),
                **{f"fairface_{k}": v for k, v in split.items()},
            }
        )
        print(rows[-1], flush=True)
    meta = {
        "command": "python benchmarks/descriptor_probe.py",
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.perf_counter() - started),
        "fairface_faces_found": int(len(owner)),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "descriptor_probe.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    (args.out_dir / "descriptor_probe.md").write_text(markdown(rows, meta))
    return 0


def markdown(rows: list[dict], meta: dict) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    lines = [
        "# Probe: dlib's frozen descriptor + logistic regression, by training set",
        "",
        (__doc__ or "").split("\n\n")[1].replace("\n", " "),
        "",
        f"`{meta['command']}` ({meta['date']}, {meta['seconds']} s; FairFace faces found: "
        f"{meta['fairface_faces_found']} of 540).",
        "",
        "| trained on | faces | threshold | UTKFace held out | FairFace all | female / male recall "
        "| adults 20+ | adults female / male | under 20 | under 20 female / male |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        a, c = r.get("fairface_adults", {}), r.get("fairface_under_20", {})
        lines.append(
            f"| {r['train']} | {r['faces']:,} | {r['threshold']:.3f} "
            f"| {pct(r['utkface_val_accuracy'])} | {pct(r['fairface_accuracy_all'])} "
            f"| {pct(r['fairface_recall_female_all'])} / {pct(r['fairface_recall_male_all'])} "
            f"| {pct(a.get('gender_accuracy_all'))} "
            f"| {pct(a.get('recall_female_all'))} / {pct(a.get('recall_male_all'))} "
            f"| {pct(c.get('gender_accuracy_all'))} "
            f"| {pct(c.get('recall_female_all'))} / {pct(c.get('recall_male_all'))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
