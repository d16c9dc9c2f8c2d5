"""Knowledge distillation: a trained teacher's outputs on every training face, once per run.

``distill.teacher`` names a checkpoint (``.ckpt`` or ``.pt``) with the student's tasks.
Before training, :func:`teacher_outputs` runs the teacher over the run's training faces,
each seen the way the teacher was trained (its own image size and normalisation, through
the same decode-once cache and face boxes as the student's data), and keeps the raw
outputs (gender logits, age logits) per table row. The student's batches carry them as
``teacher_gender`` / ``teacher_age`` and :class:`~agegender.train.module.FaceModule` adds
the distillation term (:func:`distill_loss`). The outputs are saved as ``teacher.npz`` in
the run folder, so a resumed run does not recompute them.

Offline targets (one teacher pass over un-augmented faces) keep the cost of a distilled
run close to a plain one: the teacher is ~3x slower than the student per image but runs
once, not every epoch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agegender.config import Config, ConfigError
from agegender.fileio import atomic_path

TEACHER_FILE = "teacher.npz"
FOLD = "{fold}"


def with_fold(config: Config, fold: int | None) -> Config:
    """``config`` with ``{fold}`` in ``distill.teacher`` replaced by ``fold``; a ``{fold}``
    left with no fold to fill it is a :class:`ConfigError`."""
    d = config.distill
    if d is None or FOLD not in d.teacher:
        return config
    if fold is None:
        raise ConfigError(
            f"distill.teacher: {d.teacher} has {FOLD} but no fold is set (data.fold, or run "
            "it through agegender cv)"
        )
    teacher = d.teacher.replace(FOLD, str(int(fold)))
    return config.model_copy(update={"distill": d.model_copy(update={"teacher": teacher})})


def check_teacher_folds(config: Config, folds: Any) -> str | None:
    """With a teacher per CV fold (``{fold}`` in ``distill.teacher``), the teacher's
    cross-validation must have put every face in the same fold as ``folds`` (this run's
    ``path, fold`` table), else a fold's teacher trained on that fold's test faces.
    Compared with the teacher run's ``folds.csv`` (the folder above ``fold_{fold}``);
    returns a line to print when there is none to compare with."""
    import pandas as pd

    d = config.distill
    if d is None or FOLD not in d.teacher:
        return None
    parts = Path(d.teacher).parts
    at = next(i for i, part in enumerate(parts) if FOLD in part)
    theirs_csv = Path(*parts[:at]) / "folds.csv"
    if not theirs_csv.is_file():
        return f"distill.teacher: no {theirs_csv} to check the teacher's folds against"
    theirs = pd.read_csv(theirs_csv, usecols=["path", "fold"])
    mine = folds[["path", "fold"]].astype({"fold": int})
    both = mine.merge(theirs.astype({"fold": int}), on="path", how="left", suffixes=("", "_t"))
    moved = int((both["fold_t"].notna() & (both["fold"] != both["fold_t"])).sum())
    if moved:
        raise ConfigError(
            f"distill.teacher: {theirs_csv} puts {moved} faces in other folds than this run; "
            "a fold's teacher would have trained on its test faces (use the same data and "
            "data.seed as the teacher's cross-validation)"
        )
    return None


def check_teacher(config: Config, meta: dict) -> None:
    """The teacher must predict what the student learns, in the same form."""
    t, tasks = config.task, meta.get("tasks") or {}
    where = f"distill.teacher: {config.distill.teacher}"  # type: ignore[union-attr]
    if t.gender and not tasks.get("gender"):
        raise ConfigError(f"{where}: the teacher has no gender output")
    if t.age != "none" and tasks.get("age") != t.age:
        raise ConfigError(
            f"{where}: the teacher's age is {tasks.get('age')!r}, the student's {t.age!r}"
        )


def _key(teacher: Path, paths: np.ndarray, rows: np.ndarray) -> str:
    st = teacher.stat()
    h = hashlib.sha256(f"{teacher.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    for p in paths[rows]:
        h.update(f"{p}\n".encode())
    return h.hexdigest()[:20]


@torch.inference_mode()
def _forward(
    model: torch.nn.Module, meta: dict, images: np.ndarray, rows: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    from agegender.data.augment import Preprocess

    pre = meta["preprocessing"]
    norm = Preprocess(
        size=int(pre["resize"]), input_size=int(pre["input_size"]), mean=pre["mean"], std=pre["std"]
    )
    outs: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[rows[s : s + batch_size]]))
        out = model(norm.eval(x.permute(0, 3, 1, 2)))
        for name in ("gender", "age"):
            if name in out:
                outs.setdefault(name, []).append(out[name].float().numpy())
    return {name: np.concatenate(parts) for name, parts in outs.items()}


def teacher_outputs(
    config: Config,
    data: Any,
    out: Path,
    *,
    batch_size: int = 256,
    printer: Callable[[str], Any] = print,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``({"teacher_gender": (N, 2), "teacher_age": (N, K)}, info)`` for the N rows of
    ``data.table`` (a :class:`~agegender.train.data.PreparedData`): the teacher's logits on
    the training rows, NaN elsewhere. Reads ``out/teacher.npz`` when it holds the same
    teacher file and rows."""
    from agegender.artifact import load_model, parse_meta
    from agegender.errors import ModelFileError
    from agegender.infer.align import FRAMING_TOLERANCE, UTKFACE_TEMPLATE, template_gap
    from agegender.train.data import prepare_data

    d = config.distill
    assert d is not None
    teacher = Path(d.teacher)
    try:
        model, meta = load_model(teacher)
    except (ModelFileError, FileNotFoundError) as exc:
        raise ConfigError(f"distill.teacher: {str(exc).splitlines()[0]}") from None
    check_teacher(config, meta)
    theirs = parse_meta(meta).template
    mine = data.info.get("face_template") or UTKFACE_TEMPLATE
    reframe = template_gap(theirs, mine) > FRAMING_TOLERANCE
    if reframe and not _named_template(meta):
        raise ConfigError(
            f"distill.teacher: {teacher} was trained on faces framed unlike this run's "
            "(face_crop.template) and its model has no face path of its own to cut them "
            "its way; use the same data.crop"
        )
    rows = np.unique(data.splits.train)
    paths = data.table["path"].astype(str).to_numpy()
    key = _key(teacher, paths, rows)
    info: dict[str, Any] = {"teacher": str(teacher), "faces": int(len(rows)), "key": key}
    saved = out / TEACHER_FILE
    if saved.is_file():
        with np.load(saved) as z:
            if str(z["key"]) == key:
                printer(f"teacher outputs: reusing {saved} ({len(rows)} faces)")
                return {k: z[k] for k in z.files if k.startswith("teacher_")}, {
                    **info,
                    "reused": True,
                }
    pre = meta["preprocessing"]
    size, input_size = int(pre["resize"]), int(pre["input_size"])
    started = time.perf_counter()
    if size == data.images.shape[1] and not reframe:
        images, cache_rows, teacher_rows = data.images, data.cache_rows, rows
    else:  # the same faces, cut the teacher's way (its size; its framing when it differs)
        tdata = prepare_data(
            _teacher_view(config, meta, size, input_size, reframe), progress=progress
        )
        tpaths = tdata.table["path"].astype(str).to_numpy()
        where = {p: i for i, p in enumerate(tpaths)}
        found = np.array([paths[r] in where for r in rows], dtype=bool)
        if not found.any():
            raise ConfigError(
                f"distill.teacher: none of the {len(rows)} training faces could be cut the "
                f"teacher's way ({size} px)"
            )
        if not found.all():
            printer(
                f"teacher outputs: {int((~found).sum())} of {len(rows)} training faces could "
                "not be cut the teacher's way (no face found); they learn from labels only"
            )
        rows = rows[found]
        teacher_rows = np.array([where[paths[r]] for r in rows], dtype=np.int64)
        images, cache_rows = tdata.images, tdata.cache_rows
        info["faces_without_teacher"] = int((~found).sum())
    info["teacher_framing"] = "the teacher's own (face path)" if reframe else "the student's"
    threads = config.trainer.threads
    if threads:
        torch.set_num_threads(threads)
    logits = _forward(model, meta, images, cache_rows[teacher_rows], batch_size)
    seconds = time.perf_counter() - started
    result: dict[str, np.ndarray] = {}
    for name, values in logits.items():
        full = np.full((len(paths), values.shape[1]), np.nan, np.float32)
        full[rows] = values
        result[f"teacher_{name}"] = full
    with atomic_path(saved) as tmp, open(tmp, "wb") as fh:  # DDP ranks may write it together
        np.savez(fh, key=np.array(key), **result)
    rate = len(rows) / max(seconds, 1e-9)
    printer(f"teacher outputs: {len(rows)} faces at {size} px in {seconds:.0f} s ({rate:.0f}/s)")
    return result, {**info, "seconds": round(seconds, 1), "reused": False}


def _named_template(meta: dict) -> str | None:
    """The registered face template of the teacher's architecture, unless it is UTKFace's
    (a reader box already gives that framing)."""
    from agegender.models import get_model_entry, is_model

    arch = meta.get("arch")
    if not arch or not is_model(arch):
        return None
    name = get_model_entry(arch).cfg["face_template"]
    return None if name == "utkface" else name


def _teacher_view(config: Config, meta: dict, size: int, input_size: int, reframe: bool) -> Config:
    """The run's data as the teacher reads it: its size, and with ``reframe`` every face
    through the face path to the teacher's template (``data.align`` on the main dataset
    and every ``data.extra``), as the teacher's own training did."""
    from agegender.config.schema import ModelConfig

    update: dict[str, Any] = {"size": size, "input_size": input_size}
    if reframe:
        update["align"] = True
        update["extra"] = [x.model_copy(update={"align": True}) for x in config.data.extra]
    view: dict[str, Any] = {"data": config.data.model_copy(update=update), "distill": None}
    if reframe:  # the template comes from the model: the teacher's architecture
        view["model"] = ModelConfig(name=meta["arch"])
    return config.model_copy(update=view)


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``; rows whose
    teacher output is NaN (no teacher output) are left out."""
    valid = ~torch.isnan(teacher).any(-1)
    if not valid.any():
        return student.sum() * 0.0
    t = temperature
    log_p = F.log_softmax(student[valid].float() / t, -1)
    q = F.softmax(teacher[valid].float() / t, -1)
    return F.kl_div(log_p, q, reduction="batchmean") * t * t


def distill_loss(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], gamma: float, temperature: float
) -> torch.Tensor:
    """The teacher term: ``gamma * KL_gender + (1 - gamma) * KL_age`` (one term when the
    student has one task), over the batch's ``teacher_*`` outputs."""
    terms = [
        (name, soft_kl(out[name], batch[f"teacher_{name}"], temperature))
        for name in ("gender", "age")
        if name in out and f"teacher_{name}" in batch
    ]
    if len(terms) == 2:
        return gamma * terms[0][1] + (1 - gamma) * terms[1][1]
    return terms[0][1]
