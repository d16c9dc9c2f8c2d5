"""A prediction job: inputs -> (resume) -> an engine -> the writer, with progress and counts.

``agegender predict`` is this function; Python callers use it the same way:

>>> from agegender.infer.job import predict_job
>>> from agegender.infer.predictor import PredictorConfig
>>> s = predict_job(["photos/"], "faces.parquet", PredictorConfig(model="accurate"),
...                 engine="ray", actors=8, resume=True)
>>> s.predicted, s.skipped, s.photos_per_second

Engines: ``local`` runs :meth:`Predictor.predict_paths` in this process (decode threads,
batched classifier); ``ray`` maps the same predictor over Ray Data actors
(:mod:`agegender.infer.distributed`). Both hand each input's rows to one
:class:`~agegender.infer.outputs.ResultWriter`, so their outputs have the same columns and,
for the same inputs and settings, the same rows (the Ray engine writes inputs in the order
they finish, each input's rows together).

``resume`` (Parquet outputs only): inputs already in ``out`` with the same size and mtime
are skipped, changed ones predicted again (:mod:`agegender.infer.parquet`), so a killed job
run again with ``resume=True`` finishes the rest and every input ends up in ``out`` exactly
once: as faces, a ``no face found`` row or an error row.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agegender.infer.parquet import DEFAULT_PART_SIZE
from agegender.infer.predictor import Predictor, PredictorConfig
from agegender.infer.results import ImageResult

ENGINES = ("local", "ray")


@dataclass
class JobSummary:
    """What a job did. ``inputs``: inputs given; ``skipped``: already in ``out``
    (``--resume``); ``changed``: in ``out`` but changed since, so predicted again;
    ``predicted``: inputs predicted by this run (faces, ``no face found`` or an error)."""

    run_id: str
    engine: str
    out: str | None
    inputs: int = 0
    skipped: int = 0
    changed: int = 0
    predicted: int = 0
    faces: int = 0
    failed: int = 0
    unreadable: int = 0
    repeated: int = 0  # results of an input that arrived twice (Ray retries): dropped
    actors: int | None = None
    seconds: float = 0.0
    startup_seconds: float = 0.0  # until the first input was written (Ray: actors' start)
    stopped: bool = False  # --strict stopped at an unreadable input
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def photos_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


def model_identity(predictor: Predictor, config: PredictorConfig) -> dict[str, Any]:
    """The model and face path a Parquet output records (and ``--resume`` compares)."""
    f = predictor.model_file
    sha1 = None
    if f is not None:
        h = hashlib.sha1()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        sha1 = h.hexdigest()
    return {
        "model": predictor.name,
        "model_source": predictor.source,
        "model_file": f.name if f is not None else None,
        "model_sha1": sha1,
        "arch": predictor.spec.arch,
        "detector": predictor.detector.name,
        "detect_size": config.detect_size
        if predictor.detector.name in ("haar", "blazeface")
        else None,
        "margin": predictor.margin,
        "shift": predictor.shift,
        "align": predictor.align,
        "tta": predictor.tta,
    }


def _progress(show: bool, console: Any, unit: str = "photos") -> Any:
    """A rich progress bar (``unit``/s beside it; videos: frames) shown when ``show``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            text = f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s"
            return Text(text, "progress.data.speed")

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not show,
    )


def predict_job(
    inputs: Iterable[str | os.PathLike] | Any,
    out: str | os.PathLike | None,
    config: PredictorConfig,
    *,
    engine: str = "local",
    resume: bool = False,
    annotate: str | os.PathLike | None = None,
    strict: bool = False,
    actors: int | None = None,
    address: str | None = None,
    batch_images: int | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    progress: bool = False,
    console: Any = None,
    on_result: Callable[[ImageResult], None] | None = None,
    on_start: Callable[[JobSummary], None] | None = None,
    on_written: Callable[[int], None] | None = None,
    predictor: Predictor | None = None,
) -> JobSummary:
    """Predict ``inputs`` into ``out`` (``.csv`` / ``.json`` / ``.parquet`` file or
    ``.parquet/`` folder, ``-`` for CSV on stdout, None for no rows) with ``engine``.

    Every problem the user can fix (bad ``out``, an output that is not ours, a model that
    does not load, ``resume`` against another model, Ray that cannot start) is raised as a
    one-line ValueError or OSError before any prediction. ``on_result`` sees each
    :class:`ImageResult` (local engine only: the Ray engine's results stay in the actors);
    ``on_start`` sees the summary once the inputs to predict are known (``inputs``,
    ``skipped``); ``on_written`` the count of inputs written so far, after each one."""
    from agegender.errors import check_writable
    from agegender.infer.inputs import collect_image_paths
    from agegender.infer.outputs import ResultWriter, check_replaceable, output_format
    from agegender.infer.parquet import ParquetOutput, new_run_id

    if engine not in ENGINES:
        raise ValueError(f"--engine {engine}: choose {' or '.join(ENGINES)}")
    fmt = None if out is None else output_format(out)
    out_text = None if out is None else os.fspath(out)
    if resume and fmt != "parquet":
        raise ValueError(
            f"--resume needs a Parquet --out (e.g. results.parquet), not {out_text or '-'}: CSV "
            "and JSON files record neither the model nor the inputs' sizes and dates"
        )
    if engine == "ray":
        from agegender.infer.distributed import check_address, require_ray

        ray = require_ray()
        if address and not ray.is_initialized():
            check_address(address)  # seconds, not minutes: before the model loads
        if annotate is not None:
            raise ValueError(
                "--annotate needs --engine local (the Ray engine's actors keep the images)"
            )
    if out_text not in (None, "-"):
        check_writable(out_text, folder=out_text.endswith(("/", os.sep)))
        check_replaceable(out_text)
    if annotate is not None:
        check_writable(annotate, folder=True)
    dataset_input = engine == "ray" and isinstance(inputs, ray.data.Dataset)
    if dataset_input:
        if resume:
            raise ValueError("--resume needs a list of paths, not a ray.data.Dataset")
        files: list[str] = []
    else:
        given = [os.fspath(p) for p in inputs]
        files = collect_image_paths(given)
        if not files:
            raise ValueError("no images found in " + ", ".join(given))
    run_id = new_run_id()
    summary = JobSummary(run_id, engine, out_text, inputs=len(files))
    parquet = None
    if fmt == "parquet":  # before the model loads: an output not ours is refused at once
        ParquetOutput(out_text, [], {}, run_id).check_ours()  # type: ignore[arg-type]
    own_predictor = predictor is None
    if predictor is None:
        try:
            predictor = config.load()
        except (KeyError, RuntimeError) as exc:  # a model file that does not load
            raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    try:
        identity = model_identity(predictor, config)
        summary.model = identity
        if fmt == "parquet":
            from agegender.infer.outputs import result_columns

            parquet = ParquetOutput(
                out_text,  # type: ignore[arg-type]
                result_columns(predictor.spec),
                identity,
                run_id,
                part_size=part_size,
            )
            if resume:
                parquet.check_resumable()
        spec = predictor.spec
        if engine == "ray" and own_predictor:
            predictor.close()  # the actors load their own
        if engine == "ray":
            from agegender.infer.distributed import cluster_actors, ray_session

            session: Any = ray_session(address, num_cpus=actors)
        else:
            session = contextlib.nullcontext()
        with session:
            if engine == "ray":
                summary.actors = cluster_actors(actors)
            # nothing was written so far: from here on the output changes
            todo = files
            if parquet is not None and resume:
                todo, summary.skipped, summary.changed = parquet.pending(files)
            elif parquet is not None:
                parquet.clear()
            if on_start is not None:
                on_start(summary)
            writer = ResultWriter(out_text, spec, annotate=annotate, parquet=parquet)
            if engine == "local":
                _run_local(
                    predictor,
                    todo,
                    writer,
                    summary,
                    strict=strict,
                    progress=progress,
                    console=console,
                    on_result=on_result,
                    on_written=on_written,
                )
            else:
                _run_ray(
                    inputs if dataset_input else todo,
                    config,
                    writer,
                    summary,
                    strict=strict,
                    batch_images=batch_images,
                    progress=progress,
                    console=console,
                    on_written=on_written,
                )
    finally:
        if own_predictor:
            predictor.close()
    summary.predicted = writer.images
    summary.faces, summary.failed = writer.faces, writer.failed
    summary.unreadable = writer.unreadable
    return summary


def _written(
    summary: JobSummary,
    writer: Any,
    bar: Any,
    task: Any,
    started: float,
    on_written: Callable[[int], None] | None,
    strict: bool,
) -> bool:
    """The bookkeeping after each input's rows are written (either engine): start-up time,
    the caller's hook, the progress bar; True when ``strict`` must stop the job."""
    if not summary.startup_seconds:
        summary.startup_seconds = time.perf_counter() - started
    if on_written is not None:
        on_written(writer.images)
    bar.advance(task)
    if strict and writer.unreadable:
        summary.stopped = True
        return True
    return False


def _run_local(
    predictor: Predictor,
    todo: Sequence[str],
    writer: Any,
    summary: JobSummary,
    *,
    strict: bool,
    progress: bool,
    console: Any,
    on_result: Callable[[ImageResult], None] | None,
    on_written: Callable[[int], None] | None,
) -> None:
    bar = _progress(progress, console)
    started = time.perf_counter()
    with writer, bar:
        task = bar.add_task("predicting", total=len(todo))
        for result in predictor.predict_paths(todo):
            writer.write(result)
            if on_result is not None:
                on_result(result)
            if _written(summary, writer, bar, task, started, on_written, strict):
                break
    summary.seconds = time.perf_counter() - started


def _run_ray(
    inputs: Any,
    config: PredictorConfig,
    writer: Any,
    summary: JobSummary,
    *,
    strict: bool,
    batch_images: int | None,
    progress: bool,
    console: Any,
    on_written: Callable[[int], None] | None,
) -> None:
    import numpy as np

    from agegender.infer.distributed import DEFAULT_BATCH_IMAGES, iter_input_rows, map_predict

    is_list = isinstance(inputs, list)
    n = len(inputs) if is_list else None
    seen = np.zeros(n or 0, dtype=bool)
    bar = _progress(progress, console)
    started = time.perf_counter()
    with writer, bar:
        task = bar.add_task(f"predicting ({summary.actors} Ray actors)", total=n)
        if n != 0:
            ds = map_predict(
                inputs,
                config,
                actors=summary.actors or 1,
                batch_images=batch_images or DEFAULT_BATCH_IMAGES,
                run_id=summary.run_id,
            )
            for index, rows in iter_input_rows(ds):
                if is_list:
                    if seen[index]:
                        summary.repeated += 1
                        continue
                    seen[index] = True
                writer.write_rows(rows)
                if _written(summary, writer, bar, task, started, on_written, strict):
                    break
    summary.seconds = time.perf_counter() - started
    if is_list and not summary.stopped and not seen.all():
        missing = int((~seen).sum())
        raise RuntimeError(
            f"the Ray engine returned no result for {missing} of {n} inputs "
            "(the output holds the others; run again with --resume to finish)"
        )


__all__ = ["ENGINES", "JobSummary", "model_identity", "predict_job"]
