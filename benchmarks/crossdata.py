"""Cross-dataset benchmark: bundled (or given) models on photos they never trained on,
through the predictor's face path (detector -> crop -> classifier), one command.

    python benchmarks/crossdata.py                              # bundled models, every detector
    python benchmarks/crossdata.py --models default accurate --detectors haar
    python benchmarks/crossdata.py --models runs/x/fold_0/checkpoints/best.ckpt --sets fairface
    python benchmarks/crossdata.py --utk-folds runs/lite0_cv/folds.csv --utk-fold 0
    python benchmarks/crossdata.py --render     # crossdata.md again from crossdata.json

Sets (from ``AGEGENDER_DATA``, default ``../shared/data``): ``fairface`` (FairFace-540:
balanced over 9 age bins x 2 genders, uncropped photos), ``celeba`` (all 10,000 CelebA-10k
aligned crops; gender only), ``adience`` (adience-fold0-part: 1,586 photos of 93 people
from Adience's fold 0, its tilted crops; gender and the eight age groups),
``adience-sample`` (the 19 Adience photos the rows before 2026-12-07 were measured on;
they are among adience-fold0-part's) and ``utkface`` (UTKFace crops of one CV test fold
with ``--utk-folds``, else every 10th face).
A photo's prediction is its largest face; a photo with no face found counts as an error
in the ``*_all`` figures. Every set's figures also get a 95 % interval from a bootstrap
over people (:func:`agegender.evaluate.intervals.photo_intervals`; a photo without a person
id is its own person); the page prints them for Adience, with the two age-group
read-outs overall and per age group, beside the published Adience figures. Writes
``benchmarks/crossdata.json`` and ``crossdata.md`` (``--out-dir``). FairFace is a test set:
never train or tune on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.config.paths import default_data_root
from agegender.evaluate.metrics import age_split_scores, bin_start, gender_bin_cells

REPO = Path(__file__).resolve().parents[1]
SETS = ("fairface", "celeba", "adience", "adience-sample", "utkface")
DEFAULT_SETS = ("fairface", "celeba", "adience", "utkface")


def load_set(name: str, args: argparse.Namespace) -> pd.DataFrame:
    from agegender.data.readers import read_table

    root = default_data_root()
    folder = {
        "fairface": "fairface-540",
        "celeba": "celeba-10k",
        "adience": "adience-fold0-part",
        "adience-sample": "adience-sample",
        "utkface": "utkface",
    }[name]
    _, table, _ = read_table(root / folder)
    if name == "utkface":
        if args.utk_folds:
            folds = pd.read_csv(args.utk_folds)[["path", "fold"]]
            table = table.drop(columns=["fold"]).merge(folds, on="path")
            table = table[table["fold"] == args.utk_fold]
        else:
            table = table.iloc[::10]
    if args.limit:
        table = table.iloc[: args.limit]
    return table.reset_index(drop=True)


def summarise(metrics: dict, fairness: pd.DataFrame, info: dict, frame: pd.DataFrame) -> dict:
    keep = (
        "n_photos",
        "faces_found",
        "gender_accuracy_all",
        "gender_balanced_accuracy_all",
        "gender_recall_female_all",
        "gender_recall_male_all",
        "gender_accuracy",
        "age_bin_exact_all",
        "age_bin_exact",
        "age_bin_one_off",
        "age_bin_error",
        "age_mae",
        "age_group_exact",
        "age_group_one_off",
        "age_group_exact_mass_all",
        "age_group_one_off_mass_all",
        "age_group_exact_nearest_all",
        "age_group_one_off_nearest_all",
    )
    out = {k: metrics[k] for k in keep if _number(metrics.get(k))}
    out |= probability_quality(frame)
    out["seconds_per_photo"] = info["seconds_per_photo"]
    by_bin = fairness[fairness["by"] == "age_bin"]
    if len(by_bin):
        out["by_age_bin"] = {
            r["group"]: {
                "n": int(r["n"]),
                "gender_accuracy": r.get("gender_accuracy"),
                "age_bin_exact": r.get("age_bin_exact"),
            }
            for _, r in by_bin.iterrows()
        }
    cells = gender_bin_cells(frame)
    if cells:
        out["by_gender_bin"] = cells
        adult = [c["gender_accuracy_all"] for k, c in cells.items() if _adult(k)]
        if adult:
            mean = float(np.mean(adult))
            out["adult_cells_mean"] = mean
            out["adult_cells_max_gap"] = float(max(abs(a - mean) for a in adult))
    return out


def probability_quality(frame: pd.DataFrame) -> dict[str, float]:
    """Log loss and ECE of the gender probability over the found faces: the P(female) the
    model reports (``gender_log_loss``, ``gender_ece``) and the network's own output
    before the model's calibrated decision moved it (``..._raw``)."""
    from agegender.evaluate.metrics import gender_metrics

    if "p_female" not in frame.columns or "gender" not in frame.columns:
        return {}
    found = frame[frame["face_found"].to_numpy(bool)]
    out = {}
    for suffix, col in (("", "p_female"), ("_raw", "p_female_raw")):
        if col in found.columns:
            m = gender_metrics(found["gender"], found[col])
            for key in ("gender_log_loss", "gender_ece"):
                if _number(m.get(key)):
                    out[key + suffix] = m[key]
    return out


def _adult(cell: str) -> bool:
    """FairFace's adult bins 20-29 .. 60-69 (the issue's fairness rule)."""
    return 20 <= bin_start(cell) <= 60 and not cell.endswith("+")


def _number(v: object) -> bool:
    return isinstance(v, int | float) and bool(np.isfinite(v))


def pct(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


def ci(c: dict | None) -> str:
    """``x % [low, high]`` of an interval (:func:`agegender.evaluate.intervals.photo_intervals`)."""
    if not c or c.get("value") is None:
        return "–"
    if c.get("low") is None:
        return pct(c["value"])
    return f"{pct(c['value'])} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]"


def rests_on(c: dict | None) -> str:
    return "–" if not c else f"{c['photos']:,} / {c['people']:,}"


#: Published Adience figures, quoted from ../shared/reference-experiments.md (Levi &
#: Hassner's as report 004 quotes them); none is on the photos measured here.
PUBLISHED_ADIENCE = (
    "Levi & Hassner (2015), the benchmark's own CNN: gender 86.8 ± 1.4 %, age group exact "
    "50.7 ± 5.1 %, one-off 84.7 ± 2.2 %, 5-fold subject-exclusive cross-validation on the "
    "whole benchmark (26,580 photos of 2,284 people), trained on Adience itself.",
    'Report 004 (its best, the multi-task Xception transfer model): "gender 89.3 ± 1.4" '
    'and "age 49.4 ± 4.9" (Table 3), Levi & Hassner\'s subject-exclusive 5 folds, "16228 '
    'labeled facial images", trained on Adience.',
    'Report 002 (its final model, MobileNetV2 tuned and CelebA-pretrained): "a test '
    'accuracy of 0.9287" (gender; the same table gives "MNV2 Tuned" 0.934), aligned '
    "frontal Adience, 12,194 images, a random 80:20 split (not subject-exclusive, so the "
    "same people are on both sides), trained on Adience.",
    'Report 000: "The testing accuracy is **71.80%**" (Experiment 1, gender), its '
    '"final model" "Test Accuracy 51.42%"; a Kaggle gender subset of 9,848 images, '
    "4:3:3, trained on Adience.",
)


def adience_section(results: list[dict]) -> list[str]:
    """The Adience rows with intervals over people, the two age read-outs overall and per
    true age group, and the published figures beside them."""
    rows = [r for r in results if r["set"] == "adience" and r.get("intervals")]
    if not rows:
        return []
    n = rows[0]["intervals"]["overall"]["faces_found"]
    lines = [
        "",
        f"## Adience (adience-fold0-part: {n['photos']:,} photos of {n['people']} people), "
        "intervals over people",
        "",
        "Cross-dataset: neither model trained on any Adience photo. Every figure counts a "
        "photo without a face found as wrong, and gives the photos / people it rests on "
        "and a 95 % interval from a bootstrap over people (`user_id`/`face_id`; the 2,000 "
        "resamples draw people, all of a drawn person's photos kept; a figure without an "
        "interval rests on one person). These people are few and have many photos each "
        "(one has 417, and the 238 photos of 0-2 are all of one baby), so the intervals "
        "are wide, and the photos are mostly 25-32 (950) and young children: an overall "
        "figure is the mix of this album's people, not of the benchmark's. Age "
        "group read two ways: **mass**, the group holding most of the predicted "
        "distribution (the reports' way), and **nearest**, the group nearest the expected "
        "age.",
        "",
        "| model | detector | photos / people | faces found | gender acc | balanced "
        "| female recall | male recall |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o = r["intervals"]["overall"]
        lines.append(
            f"| {r['model']} | {r['detector']} | {rests_on(o.get('gender_accuracy_all'))} "
            f"| {ci(o.get('faces_found'))} | {ci(o.get('gender_accuracy_all'))} "
            f"| {ci(o.get('gender_balanced_accuracy_all'))} "
            f"| {ci(o.get('gender_recall_female_all'))} "
            f"| {ci(o.get('gender_recall_male_all'))} |"
        )
    lines += [
        "",
        "| model | detector | read-out | photos / people | age group exact | one-off |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        o = r["intervals"]["overall"]
        for how in ("mass", "nearest"):
            exact = o.get(f"age_group_exact_{how}_all")
            if exact:
                lines.append(
                    f"| {r['model']} | {r['detector']} | {how} | {rests_on(exact)} "
                    f"| {ci(exact)} | {ci(o.get(f'age_group_one_off_{how}_all'))} |"
                )
    lines += [
        "",
        "Per true age group (the photos of that group; gender accuracy, then the age "
        "group's exact and one-off accuracy by each read-out):",
        "",
        "| model | age group | photos / people | gender acc | exact (mass) | one-off (mass) "
        "| exact (nearest) | one-off (nearest) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for group, c in r["intervals"]["by_age_group"].items():
            lines.append(
                f"| {r['model']} | {group} | {rests_on(c.get('faces_found'))} "
                f"| {ci(c.get('gender_accuracy_all'))} "
                f"| {ci(c.get('age_group_exact_mass_all'))} "
                f"| {ci(c.get('age_group_one_off_mass_all'))} "
                f"| {ci(c.get('age_group_exact_nearest_all'))} "
                f"| {ci(c.get('age_group_one_off_nearest_all'))} |"
            )
    lines += [
        "",
        "Published Adience figures, for orientation only: **the data differ**. They are "
        "5-fold or random-split results on the whole benchmark or large parts of it, by "
        "models trained on Adience; the rows above are "
        f"{n['photos']:,} photos of {n['people']} people from three albums of fold 0 (256 px "
        "crops), by models that never saw Adience.",
        "",
        *(f"- {p}" for p in PUBLISHED_ADIENCE),
    ]
    return lines


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# Cross-dataset benchmark",
        "",
        "Models on photos they never trained on, through the predictor's face path; a photo "
        "with no face found counts as an error in *all* columns. "
        f"Machine: {meta['machine']}. Commands: "
        + "; ".join(f"`{c}`" for c in meta.get("commands", [meta["command"]]))
        + ".",
        "",
        "| model | detector | set | photos | faces found | gender acc (all) | balanced (all) "
        "| female recall | male recall | gender acc (found) | age bin exact (all) "
        "| age MAE | s/photo |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["metrics"]
        mae = m.get("age_mae")
        lines.append(
            f"| {r['model']} | {r['detector']} | {r['set']} | {m['n_photos']} "
            f"| {pct(m.get('faces_found'))} | {pct(m.get('gender_accuracy_all'))} "
            f"| {pct(m.get('gender_balanced_accuracy_all'))} "
            f"| {pct(m.get('gender_recall_female_all'))} | {pct(m.get('gender_recall_male_all'))} "
            f"| {pct(m.get('gender_accuracy'))} | {pct(m.get('age_bin_exact_all'))} "
            f"| {'–' if mae is None else f'{mae:.2f}'} | {m['seconds_per_photo']:.4f} |"
        )
    notes = meta.get("notes") or []
    if notes:
        lines += ["", *(f"**Note:** {n}" for n in notes)]
    lines += adience_section(results)
    calibrated = [r for r in results if "gender_log_loss_raw" in r["metrics"]]
    if calibrated:
        lines += [
            "",
            "## Gender probability (found faces): log loss and ECE, the network's output → "
            "the P(female) the model reports",
            "",
            "| model | detector | set | log loss | ECE |",
            "|---|---|---|---:|---:|",
        ]
        for r in calibrated:
            m = r["metrics"]
            lines.append(
                f"| {r['model']} | {r['detector']} | {r['set']} "
                f"| {m['gender_log_loss_raw']:.4f} → {m['gender_log_loss']:.4f} "
                f"| {m['gender_ece_raw']:.4f} → {m['gender_ece']:.4f} |"
            )
    bins = [r for r in results if "by_age_bin" in r["metrics"]]
    if bins:
        names = list(bins[0]["metrics"]["by_age_bin"])
        lines += [
            "",
            "## FairFace per age bin (found faces): gender accuracy / age bin exact",
            "",
            "| model | detector | " + " | ".join(names) + " |",
            "|---|---|" + "---:|" * len(names),
        ]
        for r in bins:
            cells = r["metrics"]["by_age_bin"]
            row = [
                f"{pct(cells[n]['gender_accuracy'])} / {pct(cells[n]['age_bin_exact'])}"
                for n in names
            ]
            lines.append(f"| {r['model']} | {r['detector']} | " + " | ".join(row) + " |")
        lines += [
            "",
            "## FairFace adults (20+) and under 20: gender accuracy, female / male recall "
            "(misses count)",
            "",
            "| model | detector | adults | adults female / male recall | under 20 "
            "| under 20 female / male recall |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in bins:
            split = age_split_scores(r["metrics"].get("by_gender_bin", {}))
            a, c = split.get("adults", {}), split.get("under_20", {})
            lines.append(
                f"| {r['model']} | {r['detector']} | {pct(a.get('gender_accuracy_all'))} "
                f"| {pct(a.get('recall_female_all'))} / {pct(a.get('recall_male_all'))} "
                f"| {pct(c.get('gender_accuracy_all'))} "
                f"| {pct(c.get('recall_female_all'))} / {pct(c.get('recall_male_all'))} |"
            )
        lines += [
            "",
            "## FairFace adults (20-69): gender accuracy per gender x age bin (misses count)",
            "",
            "| model | detector | mean of the 10 cells | largest gap to the mean | lowest cell |",
            "|---|---|---:|---:|---|",
        ]
        for r in bins:
            m = r["metrics"]
            if "adult_cells_mean" not in m:
                continue
            cells = {k: v for k, v in m["by_gender_bin"].items() if _adult(k)}
            low = min(cells, key=lambda k: cells[k]["gender_accuracy_all"])
            lines.append(
                f"| {r['model']} | {r['detector']} | {pct(m['adult_cells_mean'])} "
                f"| {100 * m['adult_cells_max_gap']:.1f} points "
                f"| {low}: {pct(cells[low]['gender_accuracy_all'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from agegender.evaluate.photos import evaluate_photos
    from agegender.infer import Predictor
    from agegender.infer.detector import DETECTORS
    from agegender.infer.predictor import bundled_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None, help="bundled names or model files")
    ap.add_argument("--detectors", nargs="+", default=None, help=f"of {', '.join(DETECTORS)}")
    ap.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), choices=SETS)
    ap.add_argument("--utk-folds", default=None, help="folds.csv of a CV run")
    ap.add_argument("--utk-fold", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="at most this many photos per set")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--tta", default="none", choices=("none", "flip"), help="the predictor's test-time views"
    )
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks"))
    ap.add_argument(
        "--note", action="append", default=[], help="a line for the page (e.g. what a model saw)"
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="merge into an existing crossdata.json (rows of the same model, detector and set "
        "are replaced)",
    )
    ap.add_argument(
        "--render",
        action="store_true",
        help="only rewrite crossdata.md from the crossdata.json in --out-dir (no evaluation)",
    )
    args = ap.parse_args(argv)
    if args.render:
        page = json.loads((Path(args.out_dir) / "crossdata.json").read_text())
        (Path(args.out_dir) / "crossdata.md").write_text(
            markdown(page["results"], page["meta"]), encoding="utf-8"
        )
        return 0
    models = args.models or bundled_models()
    detectors = args.detectors or [d for d in DETECTORS if d != "none"]
    tables = {s: load_set(s, args) for s in args.sets}
    results = []
    for model in models:
        for det in detectors:
            predictor = Predictor.load(model, detector=det, threads=args.threads, tta=args.tta)
            label = model if args.tta == "none" else f"{model} (tta {args.tta})"
            for name, table in tables.items():
                r = evaluate_photos(predictor, table)
                m = summarise(r["metrics"], r["fairness"], r["info"], r["predictions"])
                results.append(
                    {
                        "model": label,
                        "detector": det,
                        "set": name,
                        "metrics": m,
                        "intervals": r["intervals"],
                    }
                )
                print(
                    f"{model:>10} {det:>9} {name:>8}: found {pct(m['faces_found'])}, gender "
                    f"{pct(m.get('gender_accuracy_all'))} (all), "
                    f"{pct(m.get('gender_accuracy'))} (found), "
                    f"age bin {pct(m.get('age_bin_exact_all'))}, "
                    f"{m['seconds_per_photo'] * 1000:.1f} ms/photo",
                    flush=True,
                )
            predictor.close()
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "command": shlex.join(["python", "benchmarks/crossdata.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "notes": list(args.note),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from agegender.evaluate.evaluation import write_json

    for r in results:
        r["command"] = meta["command"]
    if args.append and (out / "crossdata.json").is_file():
        old = json.loads((out / "crossdata.json").read_text())
        new_keys = {(r["model"], r["detector"], r["set"]) for r in results}
        kept = [r for r in old["results"] if (r["model"], r["detector"], r["set"]) not in new_keys]
        results = kept + results
        commands = list(dict.fromkeys([*old["meta"].get("commands", []), meta["command"]]))
        notes = list(dict.fromkeys([*old["meta"].get("notes", []), *meta["notes"]]))
        meta = {**meta, "commands": commands, "notes": notes}
    else:
        meta["commands"] = [meta["command"]]
    write_json({"meta": meta, "results": results}, out / "crossdata.json")
    (out / "crossdata.md").write_text(markdown(results, meta), encoding="utf-8")
    print(f"wrote {out / 'crossdata.md'} and crossdata.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
