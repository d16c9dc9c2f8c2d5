"""Export a model to a self-describing ONNX file and run it with ONNX Runtime.

The exported graph takes the normalised float batch ``input`` ``(batch, 3, S, S)`` (the
batch axis is dynamic) and returns probabilities, softmax included: ``gender_probs``
``(batch, 2)`` [male, female] and one age output, ``age_group_probs`` ``(batch, 8)``,
``age_probs`` ``(batch, 101)`` (DEX) or ``age_years`` ``(batch,)``. The model's meta dict
(architecture, tasks, preprocessing, label conventions, metrics) is stored as JSON in the
ONNX ``metadata_props`` under :data:`META_KEY`, so the file alone is enough to predict.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agegender.artifact import parse_meta, plain_meta, probability_module

META_KEY = "agegender_meta"
INPUT_NAME = "input"


def _export(model: Any, meta: Mapping[str, Any], f: str | io.BytesIO, opset: int) -> None:
    import torch

    spec = parse_meta(meta)
    wrapped = probability_module(model.eval(), spec)
    names = spec.output_names
    dummy = torch.zeros(2, 3, spec.input_size, spec.input_size)
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        torch.onnx.export(
            wrapped,
            (dummy,),
            f,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def with_meta(data: bytes, meta: Mapping[str, Any]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(plain_meta(meta))
    proto.producer_name = "agegender"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx_bytes(model: Any, meta: Mapping[str, Any], opset: int = 17) -> bytes:
    """The ONNX graph (probabilities, dynamic batch, meta inside) as bytes."""
    buf = io.BytesIO()
    _export(model, meta, buf, opset)
    return with_meta(buf.getvalue(), meta)


#: The operators int8 quantization rewrites: the convolutions (nearly all the compute); the
#: small linear heads, the softmax and the DEX read-out stay float.
QUANTIZED_OPS = ("Conv",)
#: The activation ranges: this percentile of the calibration faces' values (measured on
#: accurate: the largest change of P(female) on 800 faces 0.13 against 0.22 for min/max).
CALIBRATION_PERCENTILE = 99.99


@functools.cache
def int8_dot_products() -> bool | None:
    """Whether this CPU has int8 dot-product instructions (x86 AVX512-VNNI, AVX-VNNI or
    AMX; ARM dotprod), from Linux's ``/proc/cpuinfo``; ``None`` where it cannot tell.

    Without them ONNX Runtime's fused uint8 x int8 convolutions saturate their 16-bit
    sums (its documentation advises ``reduce_range`` for such CPUs): on this project's
    AVX2-only AMD EPYC machine (2026-12-08) the bundled int8 ``default`` moved P(female)
    by up to 0.48 against its float weights on 256 FairFace-540 and Adience faces (97.7 %
    of decisions alike at 0.5), against 0.087 (100 %) with the QDQ pairs run as the float
    operations they stand for, at 4.5 instead of 2.4 ms a face on one thread. So there
    :class:`OnnxModel` runs such a file unfused (``session.disable_quant_qdq``). Files
    quantized since then keep their weights to 7 bits (``reduce_range``), which cannot
    saturate and run fused everywhere: the same weights so quantized, calibrated on 512
    UTKFace photos, moved P(female) by at most 0.065 on 318 Adience faces on that machine,
    fused (0.534 without ``reduce_range``)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def quantize_onnx_bytes(
    data: bytes,
    calibration: np.ndarray,
    meta: Mapping[str, Any],
    batch_size: int = 32,
    source: Any = None,
) -> tuple[bytes, dict[str, Any]]:
    """int8 static quantization of an exported graph with ONNX Runtime's quantizer, after
    its pre-processing (shape inference, graph fusions): the weights of every convolution
    per channel (int8), their inputs per tensor (uint8) with ranges measured on
    ``calibration`` (real faces as the model sees them, ``(n, 3, S, S)`` normalised; the
    :data:`CALIBRATION_PERCENTILE` of each tensor's values), in QDQ form. About twice the
    float graph's speed on CPUs with int8 dot products (AVX512-VNNI, AVX-VNNI, ARM dotprod).

    Returns the quantized graph (``meta`` inside, with ``weights.quantized`` saying how,
    ``source`` naming where the calibration faces came from) and that record.
    ``ValueError`` for an empty or misshapen calibration batch."""
    import contextlib
    import logging
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec = parse_meta(meta)
    want = (3, spec.input_size, spec.input_size)
    if calibration.ndim != 4 or tuple(calibration.shape[1:]) != want or not len(calibration):
        raise ValueError(
            f"int8 calibration needs faces of shape (n, {want[0]}, {want[1]}, {want[2]}), "
            f"got {tuple(calibration.shape)}"
        )
    # equal batches (the percentile collector stacks them): a last partial one is left out
    batch_size = min(batch_size, len(calibration))
    used = len(calibration) - len(calibration) % batch_size
    batches = [
        {INPUT_NAME: np.ascontiguousarray(calibration[i : i + batch_size], np.float32)}
        for i in range(0, used, batch_size)
    ]

    class _Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        raw, src, dst = (Path(tmp) / f for f in ("raw.onnx", "float.onnx", "int8.onnx"))
        raw.write_bytes(data)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice and progress
        with contextlib.redirect_stdout(io.StringIO()), contextlib.ExitStack() as undo:
            undo.callback(logging.getLogger().setLevel, quiet)
            quant_pre_process(str(raw), str(src))
            quantize_static(
                str(src),
                str(dst),
                _Faces(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                reduce_range=True,  # 7-bit weights: no saturation without int8 dot products
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
            )
        out = dst.read_bytes()
    record = {
        "dtype": "int8",
        "method": "onnxruntime quant_pre_process + quantize_static, QDQ, per-channel int8 "
        "weights (7-bit range), uint8 activations, ranges at the "
        f"{CALIBRATION_PERCENTILE} percentile",
        "reduce_range": True,
        "ops": list(QUANTIZED_OPS),
        "calibration_faces": int(used),
        "calibration_from": source,
    }
    meta = dict(meta)
    meta["weights"] = {**dict(meta.get("weights") or {}), "quantized": record}
    return with_meta(out, meta), record


def export_onnx(
    model: Any, meta: Mapping[str, Any], out_path: str | os.PathLike, opset: int = 17
) -> Path:
    """Export ``model`` (a FaceModel in eval mode) with its ``meta`` to ``out_path``."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(export_onnx_bytes(model, meta, opset))
    return out


def _stored_meta(data: bytes) -> dict[str, Any] | None:
    """The meta dict stored in ONNX bytes by :func:`export_onnx`; ``None`` without one (or
    for bytes that are no ONNX model: loading them says why)."""
    import onnx

    try:
        proto = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - not a model: ONNX Runtime's load gives the reason
        return None
    for p in proto.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    return None


def read_onnx_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The meta dict stored in an ONNX file by :func:`export_onnx`."""
    meta = _stored_meta(Path(path).read_bytes())
    if meta is None:
        raise ValueError(f"{path}: no {META_KEY} metadata (not exported by agegender export)")
    return meta


class OnnxModel:
    """ONNX Runtime backend with the torch backend's interface: ``model(batch) -> dict``.

    ``source`` is an ``.onnx`` path or the file's bytes. The meta comes from the file's
    metadata, else from ``meta``, else from a ``<name>.json`` beside the file. Threads:
    ``intra_op_threads`` (default: every core), graph optimisation level ``ORT_ENABLE_ALL``.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        source: str | os.PathLike | bytes,
        intra_op_threads: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        # No busy-waiting between runs: the threads share the cores with decoding and
        # detection (and with other requests in the service).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        from agegender.errors import ModelFileError

        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        where = "ONNX bytes" if isinstance(source, bytes) else str(source)
        if not data:
            raise ModelFileError(f"{where}: cannot load ONNX model: the file is empty")
        stored = _stored_meta(data)
        sidecar = None if isinstance(source, bytes) else Path(source).with_suffix(".json")
        if stored is not None:
            meta = stored
        elif meta is None and sidecar is not None and sidecar.is_file():
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        # an int8 graph quantized with full-range weights runs fused into int8 kernels only
        # where the CPU has int8 dot products; elsewhere as the float operations its QDQ
        # pairs stand for (see int8_dot_products). 7-bit weights (reduce_range) run fused
        # everywhere.
        quantized = ((meta or {}).get("weights") or {}).get("quantized")
        self.int8_fused: bool | None = None
        if quantized:
            self.int8_fused = bool(quantized.get("reduce_range")) or (
                int8_dot_products() is not False
            )
            if not self.int8_fused:
                opts.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Failed to load model ..." -> the why
            why = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", str(exc))
            why = (why.strip().splitlines() or ["not an ONNX model"])[0]
            raise ModelFileError(f"{where}: cannot load ONNX model: {why}") from exc
        if meta is None:
            raise ValueError(
                f"{where}: no {META_KEY} metadata (not exported by agegender) and no "
                f"{sidecar.name if sidecar else 'meta'} beside it"
            )
        self.meta: dict[str, Any] = dict(meta)
        self.spec = parse_meta(self.meta)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs, strict=True))
