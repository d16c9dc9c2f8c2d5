"""Does fine-tuning `accurate` on Adience help, on held-out people, and what does it cost on
FairFace? (issue #35) -> benchmarks/adience_finetune.md

    python benchmarks/adience_finetune.py --data $AGEGENDER_DATA/adience-fold0-part \
        --fairface $AGEGENDER_DATA/fairface-540 --out runs/adience_ft --threads 1 \
        --set "data.split=[0.7,0.3]"
    python benchmarks/adience_finetune.py ... --report-only   # the tables again

Person-exclusive k-fold (``agegender data folds``: StratifiedGroupKFold on the person,
``user_id/face_id``). For each fold k, the photos of the other folds are written as a CSV
manifest and ``agegender finetune accurate`` runs on it (its recipe; its validation split
groups by person, and the gender threshold is chosen on those validation people); then the
fine-tuned ``model.onnx`` and the shipped ``accurate`` are both scored on fold k's people
through the predictor's face path (``agegender evaluate MODEL --data test.csv --detector
blazeface``). Each step is a separate ``python -m agegender`` process (what a user's
command does), skipped when its output exists, so the script resumes; ``--only K`` runs
one fold. FairFace-540 is scored for every fold's model and the shipped one (reported,
never used to choose anything).

Pooled over the folds every photo is tested once, by a model that never saw its person.
Intervals: 95 % bootstrap over people (``agegender.evaluate.bootstrap``), and for the
difference fine-tuned minus shipped a paired bootstrap over the same people.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "accurate"


def run(cmd: list[str], log: Path) -> float:
    """Run an agegender command (one thread), its output appended to ``log``; seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - started


def agegender(*args: str) -> list[str]:
    return [sys.executable, "-m", "agegender", *args]


def manifest(rows: pd.DataFrame) -> pd.DataFrame:
    """Folds-file rows -> a CSV manifest (path, gender m/f, age: years or a group, subject)."""
    from agegender.data.records import AGE_GROUP_NAMES

    def age(r: object) -> str:
        if pd.notna(r.age):
            return f"{float(r.age):g}"
        if pd.notna(r.age_group):
            return AGE_GROUP_NAMES[int(r.age_group)]
        return ""

    return pd.DataFrame(
        {
            "path": rows["path"].to_numpy(),
            "gender": rows["gender"].map({0: "m", 1: "f"}).fillna("").to_numpy(),
            "age": [age(r) for r in rows.itertuples()],
            "subject": rows["subject"].to_numpy(),
        }
    )


def evaluate(model: str, data: Path, out: Path, log: Path, threads: int) -> Path:
    results = out / "results.json"
    if not results.is_file():
        run(
            agegender(
                "evaluate",
                model,
                "--data",
                str(data),
                "--detector",
                "blazeface",
                "--out",
                str(results),
            ),
            log,
        )
    return out / "predictions.csv"


def run_fold(args: argparse.Namespace, folds: pd.DataFrame, k: int) -> dict:
    fold_dir = args.out / f"fold_{k}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    log = fold_dir / "log.txt"
    train_csv, test_csv = fold_dir / "train.csv", fold_dir / "test.csv"
    manifest(folds[folds["fold"] != k]).to_csv(train_csv, index=False)
    manifest(folds[folds["fold"] == k]).to_csv(test_csv, index=False)
    ft = fold_dir / "finetune"
    timing = {}
    if not (ft / "model.onnx").is_file():
        overrides = [f"trainer.threads={args.threads}", *args.set]
        cmd = agegender("finetune", SHIPPED, "--data", str(train_csv), "--out", str(ft))
        for o in overrides:
            cmd += ["--set", o]
        timing["finetune_s"] = round(run(cmd, log), 1)
    evaluate(str(ft / "model.onnx"), test_csv, fold_dir / "eval_finetuned", log, args.threads)
    evaluate(SHIPPED, test_csv, fold_dir / "eval_shipped", log, args.threads)
    if args.fairface:
        evaluate(str(ft / "model.onnx"), args.fairface, fold_dir / "fairface", log, args.threads)
    (fold_dir / "timing.json").write_text(json.dumps(timing))
    return timing


# ------------------------------------------------------------------------------ report
def scored(pred: pd.DataFrame, at_half: bool = False) -> pd.DataFrame:
    """Per photo: correct gender (a photo without a face is wrong) by the model's own
    decision, or with ``at_half`` by its network's P(female) above 0.5; the age group read
    out as the group holding most of the predicted distribution (exact / one-off)."""
    from agegender.data.records import AGE_GROUP_NAMES

    p_cols = [f"p_age_{g}" for g in AGE_GROUP_NAMES]
    found = pred["face_found"].astype(bool).to_numpy()
    y = pred["gender"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    if at_half:
        g = np.where(pred["p_female_raw"].to_numpy(dtype=float) > 0.5, 1.0, 0.0)
    else:
        g = pred["pred_gender"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    groups = pred["age_group"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    probs = pred[p_cols].to_numpy(dtype=float)
    pg = np.where(found, np.nan_to_num(probs, nan=-1).argmax(1), -10)
    return pd.DataFrame(
        {
            "subject": pred["subject"].astype(str).to_numpy(),
            "gender": y,
            "gender_ok": found & (g == y),
            "age_group": groups,
            "age_exact": found & (pg == groups),
            "age_one_off": found & (np.abs(pg - groups) <= 1),
            "found": found,
        }
    )


METRICS = (
    ("gender accuracy", "gender_ok", lambda s: s["gender"].notna()),
    ("female recall", "gender_ok", lambda s: s["gender"] == 1),
    ("male recall", "gender_ok", lambda s: s["gender"] == 0),
    ("age group exact", "age_exact", lambda s: s["age_group"].notna()),
    ("age group one-off", "age_one_off", lambda s: s["age_group"].notna()),
)


def paired_difference_ci(a: pd.DataFrame, b: pd.DataFrame, col: str, seed: int = 0) -> tuple:
    """Accuracy of ``a`` minus ``b`` (same photos) with a 95 % paired bootstrap over people."""
    from scipy import stats

    per = pd.DataFrame({"g": a["subject"], "a": a[col].astype(float), "b": b[col].astype(float)})
    per = per.groupby("g", sort=False).agg(["sum", "count"])
    ha, hb, n = per[("a", "sum")].to_numpy(), per[("b", "sum")].to_numpy(), per[("a", "count")]
    n = n.to_numpy(dtype=float)

    def diff(x: np.ndarray, y: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        return (x.sum(axis=axis) - y.sum(axis=axis)) / t.sum(axis=axis)

    value = float((ha.sum() - hb.sum()) / n.sum())
    if len(n) < 2:
        return value, None, None
    res = stats.bootstrap(
        (ha, hb, n),
        diff,
        paired=True,
        vectorized=True,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return value, float(res.confidence_interval.low), float(res.confidence_interval.high)


def pct(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def ci_cell(ci: dict) -> str:
    if ci["value"] is None:
        return "–"
    if ci["low"] is None:
        return f"{pct(ci['value'])} %"
    return f"{pct(ci['value'])} % [{pct(ci['low'])}, {pct(ci['high'])}]"


def diff_cell(a: pd.DataFrame, b: pd.DataFrame, col: str) -> str:
    v, lo, hi = paired_difference_ci(a, b, col)
    return f"{100 * v:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None else "–"


def main_table(models: dict[str, pd.DataFrame]) -> str:
    """One row per metric: each model pooled over the folds (95 % CI over people), each
    fine-tuned variant minus shipped (paired, over people), and the mean over people."""
    from agegender.evaluate.bootstrap import grouped_accuracy_ci

    names = list(models)
    base = names[0]
    head = ["metric", "photos / people", *names, *(f"{n} − {base}" for n in names[1:])]
    head.append("mean over people (same order)")
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, col, where in METRICS:
        parts = {n: f[where(f).to_numpy()] for n, f in models.items()}
        cis = {n: grouped_accuracy_ci(x[col], x["subject"]) for n, x in parts.items()}
        first = cis[base]
        cells = [name, f"{first['photos']} / {first['people']}"]
        cells += [ci_cell(cis[n]) for n in names]
        cells += [diff_cell(parts[n], parts[base], col) for n in names[1:]]
        people = [x.groupby("subject")[col].mean().mean() for x in parts.values()]
        cells.append(" / ".join(pct(v) for v in people) + " %")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def val_people(path: Path) -> tuple[int, int]:
    v = pd.read_csv(path)
    by = v.groupby(v["gender"])["subject"].nunique()
    return int(by.get("f", 0)), int(by.get("m", 0))


def auc(pred: pd.DataFrame) -> float:
    from sklearn.metrics import roc_auc_score

    ok = pred["face_found"].astype(bool) & pred["gender"].notna()
    return float(roc_auc_score(pred["gender"][ok].astype(int), pred["p_female_raw"][ok]))


def report(args: argparse.Namespace, ks: list[int]) -> tuple[str, str, str]:
    parts: dict[str, list[pd.DataFrame]] = {
        "shipped": [],
        "fine-tuned, val. threshold": [],
        "fine-tuned, 0.5": [],
    }
    fold_rows, ff_rows = [], []
    for k in ks:
        d = args.out / f"fold_{k}"
        ft_pred = pd.read_csv(d / "eval_finetuned" / "predictions.csv")
        sh_pred = pd.read_csv(d / "eval_shipped" / "predictions.csv")
        sh, ft, ft_half = scored(sh_pred), scored(ft_pred), scored(ft_pred, at_half=True)
        for key, frame in zip(parts, (sh, ft, ft_half), strict=True):
            parts[key].append(frame)
        summary = json.loads((d / "finetune" / "finetune.json").read_text())
        timing = (
            json.loads((d / "timing.json").read_text()) if (d / "timing.json").is_file() else {}
        )
        val = summary["validation"]
        women, men = val_people(d / "finetune" / "val_photos.csv")
        decision = summary.get("gender_decision") or {}
        has_age = ft["age_group"].notna()
        fold_rows.append(
            f"| {k} | {len(ft)} / {ft['subject'].nunique()} | {val['train_photos']} / "
            f"{val['train_people']} | {val['photos']} / {val['people']} ({women} W, {men} M) | "
            f"{summary.get('epochs_run')} ({int(summary['best'].get('epoch', -1)) + 1}) | "
            f"{decision.get('threshold')} | {pct(sh['gender_ok'].mean())} / "
            f"{pct(ft['gender_ok'].mean())} / {pct(ft_half['gender_ok'].mean())} | "
            f"{auc(sh_pred):.3f} / {auc(ft_pred):.3f} | "
            f"{pct(sh['age_exact'][has_age].mean())} / {pct(ft['age_exact'][has_age].mean())} | "
            f"{timing.get('finetune_s', '–')} |"
        )
        if args.fairface and (d / "fairface" / "results.json").is_file():
            res = json.loads((d / "fairface" / "results.json").read_text())
            ff_rows.append(
                (f"fold {k} fine-tuned", res, pd.read_csv(d / "fairface" / "predictions.csv"))
            )
    models = {k: pd.concat(v) for k, v in parts.items()}
    per_fold = [
        "| fold | test photos / people | train photos / people | validation photos / "
        "people | epochs (best) | threshold | gender acc: shipped / ft / ft at 0.5 | "
        "gender ROC-AUC: shipped / ft | age exact: shipped / ft | fine-tune s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *fold_rows,
    ]
    ff = []
    if args.fairface:
        d = args.out / "fairface_shipped"
        if (d / "results.json").is_file():
            shipped = json.loads((d / "results.json").read_text())
            ff_rows.insert(0, ("shipped accurate", shipped, pd.read_csv(d / "predictions.csv")))
        ff = [
            "| model | photos | faces found | gender acc (all) | at 0.5 | female recall | "
            "male recall | ROC-AUC | age bin exact (all) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, res, pred in ff_rows:
            m = res["metrics"]
            half = scored(pred.assign(subject=pred["path"]), at_half=True)["gender_ok"].mean()
            ff.append(
                f"| {name} | {m.get('n_photos')} | {pct(m.get('faces_found'))} | "
                f"{pct(m.get('gender_accuracy_all'))} | {pct(half)} | "
                f"{pct(m.get('gender_recall_female_all'))} | "
                f"{pct(m.get('gender_recall_male_all'))} | {m.get('gender_roc_auc', np.nan):.3f} | "
                f"{pct(m.get('age_bin_exact_all'))} |"
            )
    return main_table(models), "\n".join(per_fold), "\n".join(ff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--fairface", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/adience_ft"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", type=int, nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="extra finetune --set")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    folds_csv = args.out / "folds.csv"
    if not folds_csv.is_file():
        run(
            agegender(
                "data",
                "folds",
                str(args.data),
                "--out",
                str(folds_csv),
                "--k",
                str(args.folds),
                "--seed",
                "0",
                "--workers",
                "1",
            ),
            log,
        )
    folds = pd.read_csv(folds_csv)
    ks = args.only if args.only is not None else list(range(args.folds))
    if not args.report_only:
        if args.fairface:
            evaluate(SHIPPED, args.fairface, args.out / "fairface_shipped", log, args.threads)
        for k in ks:
            print(f"fold {k}: {run_fold(args, folds, k)}", flush=True)
    done = [
        k
        for k in range(args.folds)
        if (args.out / f"fold_{k}" / "eval_finetuned" / "predictions.csv").is_file()
    ]
    table, per_fold, ff = report(args, done)
    print(table, per_fold, ff, sep="\n\n")
    (args.out / "report.md").write_text("\n\n".join([table, per_fold, ff]) + "\n")


if __name__ == "__main__":
    main()
