"""``agegender predict``, ``export``, ``serve`` and ``bench predict``: using a model.

``predict`` writes one row per face (CSV, JSON or a table at a terminal), ``export``
writes ONNX and/or ``.pt`` files and checks the graph against PyTorch, ``serve`` runs the
HTTP API, and ``bench predict`` measures faces/s and photos/s. The helpers at the top
load a predictor with one-line errors and draw the terminal table.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from agegender.cli.base import app, console, fail
from agegender.errors import check_writable
from agegender.infer.parquet import DEFAULT_PART_SIZE

bench_app = typer.Typer(help="Speed benchmarks on this machine.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _load_predictor(
    model: str | None,
    runtime: str,
    detector: str,
    detect_size: int | None = None,
    **kwargs: object,
):
    """Predictor.load with every loading problem turned into a one-line error."""
    from agegender.infer.predictor import PredictorConfig

    config = PredictorConfig(model, runtime, detector, detect_size, **kwargs)  # type: ignore[arg-type]
    try:
        return config.load()
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _age_range(face: object) -> str:
    """The age in years with its likely range: the middle half of a DEX distribution."""
    age, probs = getattr(face, "age", None), getattr(face, "age_probs", None)
    if age is None:
        return getattr(face, "age_group", None) or "-"
    if not probs:
        return f"{age:.0f} ({face.age_group})"  # type: ignore[attr-defined]
    import numpy as np

    cdf = np.cumsum(probs)
    lo, hi = int(np.searchsorted(cdf, 0.25)), int(np.searchsorted(cdf, 0.75))
    return f"{age:.0f} ({lo}-{hi})"


def _face_table_rows(result: object) -> list[tuple[str, ...]]:
    """The table rows of one image's faces (none for an image without a result: those are
    listed under the table with their reason)."""
    name = Path(result.source).name  # type: ignore[attr-defined]
    rows = []
    for f in result.faces:  # type: ignore[attr-defined]
        p = max(f.p_female or 0.0, f.p_male or 0.0)
        gender = f"{f.gender} ({100 * p:.0f} %)" if f.gender else "-"
        how = f.face_source + (", aligned" if f.aligned else "")
        rows.append((name, str(f.face_index), gender, _age_range(f), how))
    return rows


def _print_face_table(rows: list[tuple[str, ...]]) -> None:
    from rich.table import Table

    table = Table(title="faces (age: years, likely range = middle half of the distribution)")
    for col in ("file", "face", "gender", "age", "found"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


@app.command("predict")
def predict_cmd(
    paths: list[Path] = typer.Argument(
        ..., help="Image files, folders (recursive) or .csv/.txt lists of image paths."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="A .ckpt, .onnx or .pt model, or a bundled model name."
    ),
    detector: str = typer.Option(
        "blazeface",
        "--detector",
        help="blazeface (faces of 24 px and up, group photos) | blazeface_128 (one fast pass: "
        "big faces only) | blazeface_full | haar | none (pre-cropped faces).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per forward pass."),
    out: str = typer.Option(
        "-",
        "--out",
        "-o",
        help="FILE.csv, FILE.json, FILE.parquet (one file), DIR.parquet/ (a folder of parts) "
        "or - (CSV, stdout).",
    ),
    annotate: Path | None = typer.Option(
        None,
        "--annotate",
        help="Write copies of the images with boxes and labels here (a folder; for a "
        "video: a video file, OUT.mp4 or OUT.avi).",
    ),
    runtime: str = typer.Option(
        "auto", "--runtime", help="torch | onnxruntime (auto: onnxruntime for .onnx)."
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Crop margin per side around a Haar box, as a fraction of its size (default: "
        "the detector's; Haar 0: its box matches UTKFace's framing).",
    ),
    detect_size: int | None = typer.Option(
        None,
        "--detect-size",
        help="Long side the detector looks at, at most: blazeface's finest level (default 2000: "
        "faces from 24 px, or 48 px in a 12 MP photo; less is faster) or Haar's image "
        "(default 160; more finds smaller faces, slower).",
    ),
    tta: str = typer.Option(
        "none",
        "--tta",
        help="none | flip (each face and its mirror, outputs averaged: 2x the classifier's work).",
    ),
    workers: int | None = typer.Option(None, "--workers", help="Decode/detect threads."),
    threads: int | None = typer.Option(None, "--threads", help="Classifier intra-op threads."),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first input that cannot be read (exit 1)."
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local (this process, threads) | ray (Ray Data actors; pip install -e '.\\[ray]').",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="--engine ray: the cluster, auto or HOST:PORT (default: start a local Ray).",
    ),
    actors: int | None = typer.Option(
        None,
        "--actors",
        min=1,
        help="--engine ray: actors, one CPU and one model each (default: one per CPU).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Parquet --out: skip the inputs already in it (same path, size and mtime) and "
        "predict the rest, e.g. after a killed run.",
    ),
    part_size: int = typer.Option(
        DEFAULT_PART_SIZE,
        "--part-size",
        min=1,
        help="Parquet --out: inputs per part written as the job goes (a kill loses at most "
        "one part's work, or a minute's).",
    ),
    every: int = typer.Option(
        1, "--every", min=1, help="Videos: predict every Nth frame (1: every frame)."
    ),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=1, help="Videos: stop after predicting this many frames."
    ),
) -> None:
    """Detect faces and predict gender and age; one row per face (or per failed image).

    Videos (.mp4, .mkv, .avi, .mov, ...): the faces of each (--every Nth) frame, tracked
    across frames; one row per face per frame and one summary row per track (--annotate
    OUT.mp4 writes the video with boxes and labels).

    Exit status: 0 every input was read (a photo without a face is a result, not a
    failure); 1 some inputs could not be read (their rows say why, the others' results are
    written); 2 nothing could be done (usage, model, no input)."""
    import sys

    from agegender.evaluate.tta import check_mode
    from agegender.infer.job import predict_job
    from agegender.infer.outputs import output_format
    from agegender.infer.predictor import PREDICT_TTA, PredictorConfig

    try:
        output_format(out)
    except ValueError as exc:
        fail(str(exc))
    try:
        check_mode(tta, PREDICT_TTA)
    except ValueError as exc:
        fail(f"--tta: {exc}")
    config = PredictorConfig(
        model,
        runtime,
        detector,
        detect_size,
        margin=margin,
        batch_size=batch_size,
        workers=workers,
        threads=threads,
        tta=tta,
    )
    from agegender.infer.video import is_video_name

    if any(is_video_name(p) for p in paths):
        _predict_videos(paths, out, config, every, max_frames, annotate, resume, engine, part_size)
        return
    if every != 1 or max_frames is not None:
        fail("--every and --max-frames are for videos (.mp4, .mkv, .avi, .mov, ...)")
    # a person at a terminal: a readable table (the local engine's results carry it)
    as_table = out == "-" and sys.stdout.isatty() and engine == "local"
    table_rows: list[tuple[str, ...]] = []
    without: list[tuple[str, str]] = []  # (path, reason) of the inputs without a result

    def on_result(result) -> None:  # type: ignore[no-untyped-def]
        table_rows.extend(_face_table_rows(result))
        if not result.faces:
            without.append((result.source, result.error or "no face found"))

    def on_start(s) -> None:  # type: ignore[no-untyped-def]
        if resume and (s.skipped or s.changed):
            console.print(
                f"resuming {out}: {s.skipped:,} of {s.inputs:,} inputs already there, "
                f"{s.changed:,} changed since (predicted again), "
                f"{s.inputs - s.skipped:,} to predict",
                highlight=False,
                soft_wrap=True,
            )

    summary = predict_job(
        paths,
        None if as_table else out,
        config,
        engine=engine,
        resume=resume,
        annotate=annotate,
        strict=strict,
        actors=actors,
        address=address,
        part_size=part_size,
        progress=sys.stdout.isatty() and console.is_terminal,
        console=console,
        on_result=on_result if as_table else None,
        on_start=on_start,
    )
    if as_table:
        _print_face_table(table_rows)
        if without:
            console.print("without a result:", highlight=False)
            for path, reason in without:
                console.print(f"  {path}: {reason}", highlight=False, soft_wrap=True)
    where = "the table above" if as_table else "stdout" if out == "-" else out
    see = "listed above" if as_table else "see the error column"
    s = summary
    rate = f" ({s.photos_per_second:,.0f} photos/s)" if s.seconds > 0.5 else ""
    console.print(
        f"{s.inputs - s.skipped} images: {s.faces} faces, {s.failed} without a result "
        f"({see}; {s.unreadable} could not be read); wrote {where}{rate}",
        highlight=False,
        soft_wrap=True,
    )
    if s.unreadable:
        raise typer.Exit(1)


def _predict_videos(
    paths: list[Path],
    out: str,
    config: object,
    every: int,
    max_frames: int | None,
    annotate: Path | None,
    resume: bool,
    engine: str,
    part_size: int,
) -> None:
    """``predict`` on videos (:func:`agegender.infer.video.predict_video_job`): rows per
    face per frame, one per track and one per video; at a terminal, a table of the tracks.
    Exit 1 when a video ended early (its frames read so far are written)."""
    import sys

    from rich.markup import escape

    from agegender.infer.video import is_video_name, predict_video_job

    photos = [p for p in paths if not is_video_name(p)]
    if photos:
        fail(f"{photos[0]}: give one predict command videos or photos, not both")
    if resume:
        fail("--resume is for photos; a video is predicted whole (--max-frames bounds it)")
    if engine != "local":
        fail(f"--engine {engine} is for photos; videos run on the local engine")
    as_table = out == "-" and sys.stdout.isatty()
    s = predict_video_job(
        paths,
        None if as_table else out,
        config,  # type: ignore[arg-type]
        every=every,
        max_frames=max_frames,
        annotate=annotate,
        part_size=part_size,
        progress=sys.stdout.isatty() and console.is_terminal,
        console=console,
    )
    if as_table:
        from rich.table import Table

        table = Table(title="tracked faces (gender: mean log-odds of the frames; age: median)")
        for col in ("video", "track", "seen (s)", "frames", "gender", "age"):
            table.add_column(col, overflow="fold")
        for t in s.tracks:
            p = max(t.p_female or 0.0, t.p_male or 0.0)
            seen = f"{t.first_time or 0:.1f}-{t.last_time or 0:.1f}"
            gender = f"{t.gender} ({100 * p:.0f} %)" if t.gender else "-"
            age = "-" if t.age is None else f"{t.age:.0f} ({t.age_group})"
            row = (Path(t.source).name, str(t.track_id), seen, str(t.frames_seen), gender, age)
            table.add_row(*row)
        Console().print(table)
    for video, reason in s.errors:
        text = escape(f"{video}: {reason}")
        console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)
    where = "the table above" if as_table else "stdout" if out == "-" else out
    console.print(
        f"{s.videos} video{'s' if s.videos != 1 else ''}: {s.frames:,} frames predicted of "
        f"{s.frames_read:,} read (every {every}), {s.faces:,} faces in {len(s.tracks)} "
        f"tracks; wrote {where} ({s.frames_per_second:,.1f} frames/s)",
        highlight=False,
        soft_wrap=True,
    )
    if s.errors:
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    checkpoints: list[Path] = typer.Argument(
        ...,
        help="A Lightning .ckpt (or a .pt model); several: one ensemble file that averages "
        "their probabilities (they must share input size, normalisation, framing, tasks).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="The model's name in its meta (default: the first file's stem)."
    ),
    onnx: Path | None = typer.Option(None, "--onnx", help="The .onnx file to write."),
    pt: Path | None = typer.Option(
        None, "--pt", help="Also (or only) write a PyTorch .pt (state dict + meta)."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    interpolate: float | None = typer.Option(
        None,
        "--interpolate",
        min=0.0,
        max=1.0,
        help="With two checkpoints START END of one network: one model whose every weight "
        "is (1 - ALPHA) * START + ALPHA * END (WiSE-FT), instead of an ensemble.",
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: the ONNX file's convolutions in int8 (about 2x faster on CPUs with int8 "
        "dot products), ranges measured on --calibration faces; the .pt stays float.",
    ),
    calibration: list[str] | None = typer.Option(
        None,
        "--calibration",
        help="With --quantize: photos (files, folders or .txt lists) whose faces, found and "
        "cut by the model's own face path, set the int8 ranges.",
    ),
    calibration_faces: int = typer.Option(
        512, "--calibration-faces", min=8, help="How many photos to sample for --calibration."
    ),
    detector: str = typer.Option(
        "blazeface",
        "--detector",
        help="The detector that finds the --calibration faces: blazeface | haar | none "
        "(each image is already a face crop).",
    ),
) -> None:
    """Export a checkpoint to a self-describing ONNX file (probabilities, dynamic batch).

    Several checkpoints make one ensemble: the mean of their probabilities, in one file.
    Two with --interpolate ALPHA make one model between them, weight by weight.
    --quantize int8 writes the ONNX graph in int8, calibrated on real faces.
    """
    import numpy as np

    from agegender.infer import Predictor, save_torch_model
    from agegender.infer.onnx import export_onnx

    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            fail(f"no such checkpoint: {checkpoint}")
    if onnx is None and pt is None:
        fail("export: give --onnx FILE.onnx and/or --pt FILE.pt")
    if quantize is not None:
        if quantize != "int8":
            fail(f"--quantize {quantize}: the only choice is int8")
        if onnx is None:
            fail("--quantize int8 writes an ONNX file: give --onnx FILE.onnx")
        if not calibration:
            fail("--quantize int8 needs --calibration PHOTOS (faces like the ones it will see)")
        from agegender.infer.detector import check_detector

        try:
            check_detector(detector)
        except ValueError as exc:
            fail(f"--detector: {exc}")
    elif calibration:
        fail("--calibration goes with --quantize int8")
    if onnx is not None and onnx.suffix != ".onnx":
        fail(f"--onnx {onnx}: the file name must end in .onnx")
    if pt is not None and pt.suffix not in (".pt", ".pth"):
        fail(f"--pt {pt}: the file name must end in .pt")
    for target in (onnx, pt):
        if target is not None:
            check_writable(target)
    from agegender.artifact import interpolate_models, load_model, make_ensemble

    if interpolate is not None and len(checkpoints) != 2:
        fail(f"--interpolate takes two checkpoints (START END), got {len(checkpoints)}")
    loaded = [load_model(c) for c in checkpoints]
    if interpolate is not None:
        try:
            module, meta = interpolate_models(loaded[0], loaded[1], interpolate)
        except ValueError as exc:
            fail(f"{', '.join(map(str, checkpoints))}: {exc}")
        meta["name"] = name or f"{checkpoints[1].stem}_wise{interpolate:g}"
        meta["weights"]["interpolated"]["from"] = [str(c) for c in checkpoints]
    elif len(loaded) == 1:
        module, meta = loaded[0]
        meta = dict(meta)
        meta["name"] = name or meta.get("name") or checkpoints[0].stem
    else:
        try:
            module, meta = make_ensemble(loaded, name=name or "ensemble")
        except ValueError as exc:
            fail(f"{', '.join(map(str, checkpoints))}: {exc}")
        meta["members_from"] = [str(c) for c in checkpoints]
    if pt is not None:
        save_torch_model(module, meta, pt)
        console.print(f"wrote {pt} ({pt.stat().st_size / 1e6:.1f} MB)", highlight=False)
    if onnx is None:
        return
    if quantize is not None:
        _export_int8(module, meta, onnx, opset, calibration or [], calibration_faces, detector)
        return
    export_onnx(module, meta, onnx, opset=opset)
    # check the exported graph against PyTorch on a random batch
    torch_p = Predictor.from_module(module, meta, runtime="torch", detector="none")
    onnx_p = Predictor.load(onnx, detector="none")
    s = torch_p.spec.input_size
    batch = np.random.default_rng(0).standard_normal((4, 3, s, s)).astype(np.float32)
    a, b = torch_p.classify(batch), onnx_p.classify(batch)
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    console.print(
        f"wrote {onnx} ({onnx.stat().st_size / 1e6:.1f} MB, outputs "
        f"{', '.join(onnx_p.spec.output_names)}); max |onnx - torch| = {diff:.2e}",
        highlight=False,
        soft_wrap=True,
    )


def _export_int8(
    module: object, meta: dict, onnx: Path, opset: int, photos: list[str], n: int, detector: str
) -> None:
    """``export --quantize int8`` (:func:`agegender.infer.quantize.export_int8`), one line."""
    from agegender.infer.quantize import export_int8

    try:
        report = export_int8(module, meta, onnx, photos, n=n, detector=detector, opset=opset)
    except ValueError as exc:
        fail(f"--calibration: {exc}")
    console.print(
        f"wrote {onnx} ({onnx.stat().st_size / 1e6:.1f} MB, int8, calibrated on "
        f"{report['calibration_faces']} faces); against float on {report['faces']} faces: "
        + report["summary"],
        highlight=False,
        soft_wrap=True,
    )


@app.command("serve")
def serve_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="A .ckpt, .onnx or .pt model, or a bundled model name."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    runtime: str = typer.Option("auto", "--runtime", help="torch | onnxruntime."),
    detector: str = typer.Option(
        "blazeface", "--detector", help="blazeface | blazeface_128 | blazeface_full | haar | none."
    ),
    max_file_mb: float = typer.Option(10.0, "--max-file-mb", help="Largest upload per file."),
    max_files: int = typer.Option(16, "--max-files", help="Most files per request."),
    timeout: float = typer.Option(30.0, "--timeout", help="Inference timeout per request (s)."),
    max_request_mp: float = typer.Option(
        48.0, "--max-request-mp", help="Decoded megapixels per request (all images)."
    ),
    max_queue: int = typer.Option(
        16, "--max-queue", help="Ordinary requests that may wait; more get 503 + Retry-After."
    ),
    body_timeout: float = typer.Option(
        15.0, "--body-timeout", help="Seconds a request body may take to arrive (else 408)."
    ),
    max_connections: int = typer.Option(
        256, "--max-connections", help="Open connections and requests at once (else 503)."
    ),
    detect_size: int | None = typer.Option(
        None,
        "--detect-size",
        help="Long side the detector looks at, at most (blazeface default 2000, Haar 160).",
    ),
    threads: int | None = typer.Option(None, "--threads", help="Classifier intra-op threads."),
    tta: str = typer.Option(
        "none", "--tta", help="none | flip (each face and its mirror, outputs averaged)."
    ),
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        help="Require Authorization: Bearer <token> (the file's one line) on every route but "
        "/healthz, the page and /docs. Default: $AGEGENDER_TOKEN if set, else no token.",
    ),
) -> None:
    """Serve the HTTP API (POST /v1/predict, GET /healthz, /docs) and an upload page at /."""
    from agegender.serve import ServeSettings, serve
    from agegender.serve.auth import read_token_file, token_from_env

    try:  # before the model loads: a bad token file stops here
        token = read_token_file(token_file) if token_file is not None else token_from_env()
    except ValueError as exc:
        fail(str(exc))
    predictor = _load_predictor(model, runtime, detector, detect_size, threads=threads, tta=tta)
    settings = ServeSettings(
        max_file_bytes=int(max_file_mb * 1024 * 1024),
        max_files=max_files,
        timeout_s=timeout,
        max_request_pixels=int(max_request_mp * 1_000_000),
        max_queue=max_queue,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
        token=token,
    )
    auth = " (Bearer token required)" if token else ""
    console.print(f"serving {predictor.name} ({predictor.runtime}) on http://{host}:{port}/{auth}")
    serve(predictor, settings, host=host, port=port)


@bench_app.command("predict")
def bench_predict_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model file, bundled name or registered architecture."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    seconds: float = typer.Option(2.0, "--seconds", help="Time per measurement."),
    photos: int = typer.Option(200, "--photos", help="Photos for the end-to-end figure."),
    detector: str = typer.Option(
        "blazeface", "--detector", help="blazeface | blazeface_128 | blazeface_full | haar | none."
    ),
    tta: str = typer.Option("none", "--tta", help="none | flip (two views per face)."),
    onnx_file: Path | None = typer.Option(
        None,
        "--onnx",
        help="The ONNX file to time for the ONNX figures (e.g. an int8 export of --model); "
        "default: a bundled model's own .onnx, else --model exported on the fly.",
    ),
) -> None:
    """Faces/s of the classifier (batch 1 and 64, torch and ONNX) and photos/s end to end
    (made 250x250 photos, and FairFace-540's real photos when the data is there)."""
    import json

    from agegender.infer.bench import bench_predict

    if onnx_file is not None and not onnx_file.is_file():
        fail(f"--onnx {onnx_file}: no such file")
    try:
        res = bench_predict(
            model, seconds=seconds, photos=photos, detector=detector, tta=tta, onnx_file=onnx_file
        )
    except ValueError as exc:
        fail(str(exc).splitlines()[0])
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    for k, v in res.items():
        typer.echo(f"{k:32s} {v}")
