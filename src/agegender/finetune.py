"""Fine-tune a trained model on your own labelled photos: ``agegender finetune``.

:func:`finetune` is one command's worth of work, each step an existing one:

1. **start** — the model's PyTorch weights (a bundled name through
   :func:`agegender.bundled.resolve_model`, or a ``.pt`` / ``.ckpt``) and its own training
   recipe: a bundled model's card holds it (:func:`agegender.bundled.bundled_recipe`), a
   file made by ``train`` or ``finetune`` carries it in its meta (``config``).
2. **config** (:func:`finetune_config`) — the recipe with the data replaced by yours (its
   framing, sizes and split kept; no extra datasets) and ``model.init_from`` set to the
   weights; ``--set key=value`` overrides apply last, as for ``train``. Photos labelled
   for one task only keep the model's other head: the unlabelled task's loss weight is 0
   (``task.gamma``). DEX age heads learn from exact ages or from Adience groups alone
   (each group's share of the distribution, :func:`agegender.train.module.dex_loss`).
3. **train** (:func:`agegender.train.train`) into ``OUT`` — the validation split groups
   photos by person (the dataset's ``subject`` column, e.g. Adience's ``user_id/face_id``),
   so one person's photos never sit on both sides.
4. **calibrate** — the best epoch's model is written to ``OUT/model.pt`` and its gender
   threshold chosen on the validation people's photos through the predictor's face path
   (:func:`agegender.evaluate.calibrate.calibrate_model`, the rule and age bands of the
   starting model's own decision). The rule's minimum (20 of each gender) counts people,
   not photos, since photos of one person are alike: with fewer validation people the
   network's own 0.5 is kept, and the card and ``finetune.json`` say why (on Adience's 93
   people a threshold chosen on 20-25 validation people swung from 0.68 to 0.995 across
   folds and cost held-out accuracy: ``benchmarks/adience_finetune.md``).
5. **export** — ``OUT/model.onnx`` (:func:`agegender.infer.onnx.export_onnx`) and a model
   card, ``OUT/MODEL_CARD.md``.

This module sits above training, evaluation and inference (it composes them), like the
CLI; nothing below imports it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from agegender.bundled import is_bundled_name, model_card, resolve_model
from agegender.config import Config, ConfigError
from agegender.config.load import apply_overrides, validate_config

__all__ = ["FinetuneResult", "FinetuneSource", "finetune", "finetune_config", "start_from"]

#: The recipe's ``data`` keys a fine-tune keeps (how faces are cut and split); the rest
#: (path, format, extra datasets, folds) describe the recipe's own data.
KEPT_DATA_KEYS = ("size", "input_size", "align", "crop", "split", "seed", "audit")
VAL_MANIFEST = "val_photos.csv"


@dataclass(frozen=True)
class FinetuneSource:
    """Where a fine-tune starts: the weights file and the recipe it was trained with."""

    model: str  #: as given (a bundled name or a path)
    weights: Path  #: the PyTorch file read into the network (``model.init_from``)
    recipe: dict[str, Any]
    recipe_from: str  #: the card or file the recipe came from
    meta: dict[str, Any]


@dataclass
class FinetuneResult:
    """What :func:`finetune` wrote and measured."""

    out_dir: Path
    model_pt: Path
    model_onnx: Path
    card: Path
    summary: dict[str, Any]


def start_from(model: str | os.PathLike) -> FinetuneSource:
    """The weights and training recipe of ``model``: a bundled name (the recipe from its
    card), or a ``.pt``/``.ckpt`` that carries its config (written by ``train`` or
    ``finetune``). An ``.onnx`` file has no trainable weights here: an error says so."""
    from agegender.artifact import load_model

    path = resolve_model(model, "torch")
    if path.suffix == ".onnx":
        raise ConfigError(
            f"{path}: an ONNX file cannot be fine-tuned; start from its .pt or .ckpt "
            "(or a bundled model's name)"
        )
    _, meta = load_model(path)
    meta = dict(meta)
    if is_bundled_name(model):
        from agegender.bundled import bundled_recipe

        recipe, named = bundled_recipe(str(model))
        where = f"{model_card(str(model)).name} ({named})"
    else:
        recipe, where = meta.get("config"), str(path)
        if not isinstance(recipe, dict):
            raise ConfigError(
                f"{path}: carries no training recipe (config) to fine-tune with; start from "
                "a bundled model's name, a .ckpt from 'agegender train' or a model.pt from "
                "'agegender finetune'"
            )
    return FinetuneSource(str(model), path, recipe, where, meta)


def _has_labels(table: pd.DataFrame) -> tuple[bool, bool]:
    """``(any gender label, any age label: years or an age group)``."""
    has_age = table["age"].notna().any() or table["age_group"].notna().any()
    return bool(table["gender"].notna().any()), bool(has_age)


def finetune_config(
    source: FinetuneSource,
    data: str | os.PathLike,
    *,
    format: str = "auto",
    overrides: Sequence[str] = (),
    labels: tuple[bool, bool] = (True, True),
) -> Config:
    """The fine-tune's config: ``source``'s recipe on ``data`` (see the module docstring);
    ``labels``: whether ``data`` has gender and age labels (a task without any gets loss
    weight 0, keeping the model's head). Raises ConfigError naming the key."""
    recipe = json.loads(json.dumps(source.recipe))  # a deep copy
    d = recipe.get("data") or {}
    kept = {k: d[k] for k in KEPT_DATA_KEYS if k in d}
    if len(kept.get("split") or ()) == 3:  # no test share: validation people only
        kept["split"] = list(kept["split"][:2])
    recipe["data"] = {**kept, "path": str(Path(data).resolve()), "format": format}
    model = dict(recipe.get("model") or {})
    model["init_from"] = str(source.weights)
    recipe["model"] = model
    recipe["distill"] = None
    stem = Path(source.model).stem if Path(source.model).suffix else source.model
    recipe["name"] = f"{stem}_finetune"
    recipe["description"] = f"{source.model} fine-tuned on {data} with its recipe"
    task = dict(recipe.get("task") or {})
    has_gender, has_age = labels
    both = bool(task.get("gender", True)) and task.get("age", "none") != "none"
    if both and not has_age:
        task["gamma"] = 1.0  # gender only: the age head is kept, not trained
    elif both and not has_gender:
        task["gamma"] = 0.0
    recipe["task"] = task
    apply_overrides(recipe, list(overrides))
    return validate_config(recipe)


def _validation_photos(config: Config, out: Path) -> tuple[Path, dict[str, int]]:
    """Write the run's validation photos of ``config.data.path`` (the split training used:
    same table, same seeds) as a CSV manifest; returns it and its photo / people counts."""
    from agegender.data.records import AGE_GROUP_NAMES
    from agegender.train.data import prepare_data

    data = prepare_data(config)
    table = data.table
    val = table.iloc[data.splits.val]
    if "source" in val.columns and config.data.extra:
        val = val[val["source"] == Path(config.data.path).name]

    def age_text(row: Any) -> str:
        if pd.notna(row.age):
            return f"{float(row.age):g}"
        if pd.notna(row.age_group) and int(row.age_group) >= 0:
            return AGE_GROUP_NAMES[int(row.age_group)]
        return ""

    gender = val["gender"].astype("Int64").map({0: "m", 1: "f"}).fillna("")
    frame = pd.DataFrame(
        {
            "path": val["path"].astype(str).to_numpy(),
            "gender": gender.to_numpy(),
            "age": [age_text(r) for r in val.itertuples()],
            "subject": val["subject"].astype(str).to_numpy(),
        }
    )
    path = out / VAL_MANIFEST
    frame.to_csv(path, index=False)
    # people per gender: a photo without a person id counts as its own person
    person = val["subject"].astype(object).where(val["subject"].notna(), val["path"])
    by_gender = person.groupby(val["gender"].astype("Int64")).nunique()
    counts = {
        "photos": int(len(frame)),
        "people": int(val["subject"].nunique()),
        "women": int(by_gender.get(1, 0)),
        "men": int(by_gender.get(0, 0)),
        "train_photos": int(len(data.splits.train)),
        "train_people": int(table.iloc[data.splits.train]["subject"].nunique()),
    }
    return path, counts


def _source_bands(meta: dict[str, Any]) -> tuple[str, tuple[float, ...] | None]:
    """The rule and predicted-age band edges of the starting model's gender decision."""
    decision = meta.get("gender_decision") or {}
    rule = str(decision.get("rule") or "equal-recall")
    bands = decision.get("age_bands") or {}
    edges = bands.get("edges") if isinstance(bands, dict) else None
    return rule, tuple(float(e) for e in edges) if edges else None


def finetune(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    overrides: Sequence[str] = (),
    detector: str = "blazeface",
    progress: bool | None = None,
    printer: Callable[[str], Any] = print,
) -> FinetuneResult:
    """Fine-tune ``model`` (a bundled name, ``.pt`` or ``.ckpt``) on the labelled photos
    ``data`` into ``out``: ``checkpoints/``, ``metrics.csv``, ``summary.json`` (as
    ``train``), ``model.pt`` and ``model.onnx`` (threshold calibrated on the validation
    people's photos through ``detector``'s face path), ``MODEL_CARD.md`` and
    ``finetune.json``. Raises ConfigError / DatasetError (one line) for bad input."""
    from agegender.artifact import load_model, save_torch_model
    from agegender.data.prepare import read_rows
    from agegender.evaluate import calibrate as cal
    from agegender.evaluate.calibrate import calibrate_model, write_with_meta
    from agegender.infer.onnx import export_onnx
    from agegender.train import train

    out_dir = Path(out).resolve()
    source = start_from(model)
    rows = read_rows(data, format, audit=False)
    labels = _has_labels(rows.table)
    if not any(labels):
        raise ConfigError(f"{data}: no gender or age labels to fine-tune on")
    config = finetune_config(source, data, format=format, overrides=overrides, labels=labels)
    printer(
        f"fine-tuning {source.model} ({source.weights.name}) with its recipe from "
        f"{source.recipe_from} on {data}"
    )
    result = train(config, out_dir, progress=progress, printer=printer)
    best = result.best_checkpoint or result.last_checkpoint
    net, meta = load_model(best)
    config_dict = meta.get("config")
    meta = {k: v for k, v in meta.items() if k not in ("gender_decision",)}
    meta.update(
        name=config.name,
        config=config_dict,
        finetuned_from={
            "model": source.model,
            "file": str(source.weights),
            "recipe": source.recipe_from,
            "name": source.meta.get("name"),
            "trained_on": source.meta.get("trained_on"),
        },
        trained_on=f"{source.meta.get('trained_on') or source.model}, then {data}",
    )
    model_pt = save_torch_model(net, meta, out_dir / "model.pt")
    val_csv, val_counts = _validation_photos(config, out_dir)
    decision: dict[str, Any] | None = None
    not_calibrated = None
    if (
        config.task.gender
        and min(val_counts["women"], val_counts["men"]) < cal.MIN_FACES_PER_GENDER
    ):
        # photos of one person are alike: the rule's minimum counts people, not photos
        not_calibrated = (
            f"{val_counts['women']} women and {val_counts['men']} men among the validation "
            f"people; a threshold needs at least {cal.MIN_FACES_PER_GENDER} people of each "
            "gender"
        )
        printer(f"gender threshold not recalibrated (the network's 0.5): {not_calibrated}")
    elif config.task.gender:
        rule, bands = _source_bands(source.meta)
        try:
            decision = calibrate_model(
                str(model_pt),
                val_csv,
                model_pt,
                format="csv",
                rule=rule,
                age_bands=bands if config.task.age != "none" else None,
                detector=detector,
                threads=config.trainer.threads,
            )
        except ValueError as exc:  # e.g. too few validation faces of a gender
            not_calibrated = str(exc).splitlines()[0]
            printer(f"gender threshold not recalibrated (the network's 0.5): {not_calibrated}")
    net, meta = load_model(model_pt)
    if "config" not in meta:  # calibrate leaves the recipe out; keep it for a next fine-tune
        meta["config"] = config_dict
        write_with_meta(model_pt, model_pt, meta)
    model_onnx = export_onnx(
        net.eval(), {k: v for k, v in meta.items() if k != "config"}, out_dir / "model.onnx"
    )
    summary = {
        "source": {
            "model": source.model,
            "file": str(source.weights),
            "recipe_from": source.recipe_from,
        },
        "data": str(data),
        "labels": {"gender": labels[0], "age": labels[1]},
        "gamma": config.task.gamma,
        "overrides": list(overrides),
        "validation": val_counts,
        "best": result.summary.get("best"),
        "epochs_run": result.summary.get("epochs_run"),
        "train_time_s": result.summary.get("train_time_s"),
        "gender_decision": decision,
        "not_calibrated": not_calibrated,
        "files": {"pt": str(model_pt), "onnx": str(model_onnx)},
    }
    card = write_card(out_dir / "MODEL_CARD.md", config, source, summary, result.summary)
    summary["files"]["card"] = str(card)
    (out_dir / "finetune.json").write_text(
        json.dumps(summary, indent=2, default=str), encoding="utf-8"
    )
    return FinetuneResult(out_dir, model_pt, model_onnx, card, summary)


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f} %"


def write_card(
    path: Path,
    config: Config,
    source: FinetuneSource,
    summary: dict[str, Any],
    run: dict[str, Any],
) -> Path:
    """The fine-tuned model's card: where it started, the data, the validation figures
    and decision, how to use it, and the recipe."""
    best = summary.get("best") or {}
    val = summary["validation"]
    decision = summary.get("gender_decision") or {}
    at = decision.get("at_decision") or {}
    used = (run.get("dataset") or {}).get("splits") or {}
    lines = [
        f"# Model card: {config.name} (`{config.model.name}`, fine-tuned from `{source.model}`)",
        "",
        "Made by `agegender finetune`. Use it with `agegender predict --model "
        f"{path.parent / 'model.onnx'}` (or `model.pt` with `--runtime torch`).",
        "",
        "## Where it started",
        f"- Weights: `{source.model}` ({source.weights}), trained on "
        f"{source.meta.get('trained_on') or 'see its card'}.",
        f"- Recipe: {source.recipe_from}; its framing, input size and schedule, with the "
        "data replaced (see the recipe below).",
        "- Licence: these weights derive from the starting model's training data and "
        "yours: the starting model's licence notes apply.",
        "",
        "## Data",
        f"- `{summary['data']}`: {used.get('train', '?')} training and "
        f"{used.get('val', '?')} validation photos; validation people never trained on "
        f"({val['people']} people, {val['photos']} photos; training: "
        f"{val['train_people']} people).",
        f"- Labels: gender {'yes' if summary['labels']['gender'] else 'no'}, age "
        f"{'yes' if summary['labels']['age'] else 'no'} (loss weight of gender "
        f"`task.gamma` = {summary['gamma']:g}"
        + (
            "; the age head was kept, not trained"
            if summary["gamma"] == 1.0 and config.task.age != "none"
            else ""
        )
        + ").",
        "",
        "## Validation (the best epoch, on the validation people's face crops)",
        "",
        "| metric | value |",
        "| --- | ---: |",
    ]
    for key, name in (
        ("val/gender_acc", "gender accuracy (at 0.5)"),
        ("val/age_acc", "age group exact"),
        ("val/age_acc_1off", "age group one-off"),
        ("val/age_mae", "age MAE (years)"),
    ):
        if key in best:
            value = f"{best[key]:.2f}" if key == "val/age_mae" else _pct(best[key])
            lines.append(f"| {name} | {value} |")
    lines += [
        f"| epochs run (best) | {run.get('epochs_run')} ({int(best.get('epoch', -1)) + 1}) |",
        "",
    ]
    if summary.get("not_calibrated"):
        lines += [
            "## Gender decision",
            "",
            "Not recalibrated: the network's P(female) above 0.5 is female. Why: "
            f"{summary['not_calibrated']}. Run `agegender calibrate` on more labelled "
            "photos of people it never trained on.",
            "",
        ]
    if decision:
        lines += [
            "## Gender decision",
            "",
            f"Threshold {decision.get('threshold')} (rule {decision.get('rule')}), chosen on "
            f"{decision.get('photos')} validation photos ({decision.get('faces_found')} with "
            f"a face found by {decision.get('detector')}); the starting model's was "
            f"{(source.meta.get('gender_decision') or {}).get('threshold', 0.5)}. At this "
            "decision on those photos: "
            f"accuracy {_pct(at.get('accuracy'))}, female recall "
            f"{_pct(at.get('female_recall'))}, male recall {_pct(at.get('male_recall'))}.",
            "",
        ]
    lines += [
        "## Limits",
        "- Validation figures rest on the people above: with few people they vary a lot "
        "from one split to another. Test on people it never saw before relying on it.",
        "- The starting model's intended use and limits (its card) still apply.",
        "",
        "## Recipe",
        "",
        "```yaml",
        config.to_yaml().rstrip(),
        "```",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
