"""The Ray engine: the same predictor, in Ray Data actors, on one machine or many.

>>> from agegender.infer.distributed import predict_dataset
>>> rows = predict_dataset(["photos/", "list.txt"], model="accurate", actors=4)
>>> rows.write_parquet("faces/")                  # or rows.iter_batches(), rows.to_pandas()

``predict_dataset`` takes what ``agegender predict`` takes (files, folders, ``.txt`` /
``.csv`` lists) or a ``ray.data.Dataset`` with a ``path`` column (files to read) and/or a
``bytes`` column (encoded images, e.g. ``ray.data.read_binary_files(..., include_paths=
True)``), and maps its batches through :class:`PredictActor` (``map_batches`` with a
class): each actor builds the predictor once from a
:class:`~agegender.infer.predictor.PredictorConfig` and runs
:meth:`~agegender.infer.predictor.Predictor.predict_iter` on each batch, and each result
becomes rows with :func:`~agegender.infer.outputs.keyed_rows`: the local engine's code
path, only distributed. The rows have the Parquet output's columns (the CSV's, the resume
key ``file_size`` / ``file_mtime_ns``, ``run_id``).

A model file travels to the actors through Ray's object store (the machines need not share
it); the images are read by the actors, so paths must be readable on every machine, and
``agegender`` must be installed there. An actor that dies is restarted and its batch run
again (Ray's task retries); ``agegender predict --engine ray`` (:mod:`agegender.infer.job`)
also drops a repeated input, should one ever arrive twice.

:func:`ray_session` connects (``address``: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)
or starts a local Ray (no address); an address where nothing answers is a one-line error
within seconds (Ray itself would wait for minutes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from agegender.infer.predictor import PredictorConfig

#: Images per actor call (one Ray Data batch); a killed actor redoes at most one call.
DEFAULT_BATCH_IMAGES = 64
_INTERNAL = ("input_index", "input_first")  # per-row bookkeeping, dropped from outputs


class RayUnavailable(ValueError):
    """Ray is not installed, or cannot start or be reached; ``str()`` is one line."""


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`RayUnavailable` saying how to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailable(
            f"--engine ray needs Ray Data ({exc}); install it with "
            "pip install -e \".[ray]\" (or pip install 'ray[data]')"
        ) from exc
    return ray


def _resolve_auto() -> str | None:
    """What Ray's ``address="auto"`` would connect to: ``RAY_ADDRESS``, else the address a
    ``ray start`` on this machine recorded (Ray's ``/tmp/ray/ray_current_cluster``)."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env
    recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        text = recorded.read_text().strip()
        if text:
            return text.splitlines()[0].strip()
    return None


def _not_a_gcs(target: str, timeout: float) -> str | None:
    """Why ``target`` is not a Ray head's GCS, or None when it is: one gRPC call Ray's
    GCS answers at once (``NodeInfoGcsService/GetClusterId``; with Ray's token auth on it
    answers UNAUTHENTICATED, since we send no token). A port that accepts connections but
    is not a GCS (a proxy, another server) answers otherwise, and ``ray.init`` would wait
    there for minutes. Without grpcio (tensorboard brings it) the TCP check stands alone."""
    try:
        import grpc
    except ImportError:
        return None
    channel = grpc.insecure_channel(target)
    try:
        channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=timeout)
        return None
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within {timeout:g} s"
        details = (exc.details() or "").rsplit(": ", 1)[-1]
        return f"it answers, but not as a Ray head ({code.name}: {details})"
    finally:
        channel.close()


def check_address(address: str, timeout: float = 3.0) -> str:
    """The address to hand ``ray.init``, once something there answered like a Ray head
    within ``timeout`` seconds (a TCP connection, then for ``HOST:PORT`` one gRPC call to
    its GCS); else :class:`RayUnavailable`, one line, at once."""
    given = address
    if address == "auto":
        found = _resolve_auto()
        if found is None:
            raise RayUnavailable(
                "--address auto: no running Ray cluster found on this machine (RAY_ADDRESS "
                "unset, no 'ray start' here); start one with 'ray start --head' or drop "
                "--address to run a local Ray"
            )
        address = found
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--address {given}: expected auto, HOST:PORT or ray://HOST:PORT")
    where = f"--address {given}: nothing answers at {host}:{port}"
    advice = "is the Ray head running ('ray start --head')?"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else None
        raise RayUnavailable(f"{where} ({reason or exc.strerror or exc}); {advice}") from exc
    if address.startswith("ray://"):
        return address  # the Ray Client server: its own protocol, checked by ray.init
    why = _not_a_gcs(hostport, timeout)
    if why is not None:
        raise RayUnavailable(f"--address {given}: nothing answers as a Ray head ({why}); {advice}")
    return hostport


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray for the job: the one already initialised in this process, else a connection to
    ``address``, else a new local Ray with ``num_cpus`` CPUs (default: this machine's).
    Yields the ``ray`` module; shuts down only what it started."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=check_address(address), **quiet)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                **quiet,
            )
    except RayUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user gets one line
        raise RayUnavailable(
            f"Ray did not start{f' at {address}' if address else ''}: "
            + (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        ) from exc
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_actors(actors: int | None) -> int:
    """``actors``, checked against the cluster's CPUs (one CPU each); default: all."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0))
    if actors is None:
        return max(1, int(cpus))
    if actors < 1:
        raise RayUnavailable(f"--actors {actors}: give at least 1")
    if actors > cpus:
        raise RayUnavailable(
            f"--actors {actors}: the Ray cluster has {cpus:g} CPUs and each actor takes one"
        )
    return actors


class PredictActor:
    """One Ray Data actor: the predictor, loaded once, over batches of inputs.

    A batch (an Arrow table) has ``path`` and/or ``bytes`` (and, from
    :func:`predict_dataset`'s own list, ``input_index``); the actor returns the rows of
    every input, each input's rows together, the first marked ``input_first``."""

    def __init__(
        self, config: PredictorConfig, model_bytes: bytes | None, model_suffix: str, run_id: str
    ) -> None:
        from agegender.infer.outputs import result_columns
        from agegender.infer.parquet import arrow_schema

        if model_bytes is None:
            self.predictor = config.load()
        else:  # the driver's model file, written here for the loader (then removed)
            with tempfile.TemporaryDirectory(prefix="agegender-model-") as tmp:
                local = Path(tmp) / f"model{model_suffix}"
                local.write_bytes(model_bytes)
                self.predictor = config.load(local)
        import pyarrow as pa

        schema = arrow_schema(result_columns(self.predictor.spec))
        self.schema = schema.append(pa.field("input_index", pa.int64())).append(
            pa.field("input_first", pa.bool_())
        )
        self.run_id = run_id

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from agegender.infer.outputs import keyed_rows
        from agegender.infer.parquet import input_key

        names = batch.column_names
        if "path" not in names and "bytes" not in names:
            raise ValueError(
                f"the dataset needs a 'path' or a 'bytes' column; it has {', '.join(names)}"
            )
        n = batch.num_rows
        paths = batch["path"].to_pylist() if "path" in names else [None] * n
        data = batch["bytes"].to_pylist() if "bytes" in names else None
        index = batch["input_index"].to_pylist() if "input_index" in names else [-1] * n
        if data is not None:
            items: list[Any] = data
            sources = [p if p is not None else "<bytes>" for p in paths]
            keys = [(len(b) if b is not None else None, None) for b in data]
        else:
            items, sources = paths, [str(p) for p in paths]
            keys = [input_key(p) for p in sources]
        rows: list[dict[str, Any]] = []
        results = self.predictor.predict_iter(items, sources=sources)
        for i, result in enumerate(results):
            for j, row in enumerate(keyed_rows(result, keys[i], self.run_id)):
                row["input_index"], row["input_first"] = index[i], j == 0
                rows.append(row)
        names_out = self.schema.names
        return pa.Table.from_pylist([{k: r.get(k) for k in names_out} for r in rows], self.schema)


def _model_payload(config: PredictorConfig) -> tuple[bytes | None, str]:
    """The model file's bytes for the actors (None: a bundled model, installed with the
    package on every machine)."""
    if config.model is None:
        return None, ""
    path = Path(config.model)
    if path.suffix in (".ckpt", ".onnx", ".pt", ".pth") and path.is_file():
        return path.read_bytes(), path.suffix
    return None, ""


def _block_rows(n: int, actors: int, batch_images: int) -> int:
    """Inputs per block: at least four blocks per actor for small jobs (so every actor has
    work and the last ones finish together), at most 16 batches for large ones (so the
    driver holds few blocks: 10 million inputs make about 10,000)."""
    return max(1, min(math.ceil(n / (4 * max(1, actors))), 16 * batch_images))


def _paths_dataset(paths: Sequence[str], per_block: int) -> Any:
    """A dataset over ``paths`` (with their ``input_index``), ``per_block`` rows a block."""
    import pyarrow as pa
    import ray.data

    n = len(paths)
    table = pa.table({"path": pa.array(list(paths), pa.string()), "input_index": range(n)})
    return ray.data.from_arrow([table.slice(i, per_block) for i in range(0, n, per_block)])


def map_predict(
    inputs: Any,
    config: PredictorConfig,
    *,
    actors: int,
    batch_images: int = DEFAULT_BATCH_IMAGES,
    run_id: str = "",
) -> Any:
    """The dataset of rows (with the internal ``input_index`` / ``input_first``)."""
    import ray
    import ray.data

    # the job draws its own bar; set before the dataset exists (it copies the context)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if isinstance(inputs, ray.data.Dataset):
        ds, batch = inputs, batch_images
    else:
        paths = list(inputs)
        per_block = _block_rows(len(paths), actors, batch_images)
        ds = _paths_dataset(paths, per_block)
        # a batch never spans blocks (Ray Data would merge small blocks up to batch_size)
        batch = min(batch_images, per_block)
    # each actor has one CPU: one decode thread and one classifier thread by default
    config = dataclasses.replace(config, workers=config.workers or 1, threads=config.threads or 1)
    blob, suffix = _model_payload(config)
    blob_ref = ray.put(blob) if blob is not None else None
    return ds.map_batches(
        PredictActor,
        fn_constructor_args=(config, blob_ref, suffix, run_id),
        batch_size=batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a
        # killed actor comes back and its batch runs again (tests/test_predict_ray.py)
    )


def predict_dataset(
    inputs: Iterable[str | os.PathLike] | Any,
    config: PredictorConfig | None = None,
    *,
    model: str | None = None,
    detector: str | None = None,
    actors: int | None = None,
    batch_images: int = DEFAULT_BATCH_IMAGES,
    run_id: str | None = None,
) -> Any:
    """A lazy ``ray.data.Dataset`` of prediction rows for ``inputs`` (see the module
    docstring), through ``actors`` actors (default: one per CPU of the cluster).

    Uses the Ray this process is connected to (``ray.init(...)`` first to use a cluster),
    else starts a local one. ``config`` (or ``model`` / ``detector``) says which predictor
    the actors build."""
    ray = require_ray()
    from agegender.infer.inputs import collect_image_paths
    from agegender.infer.parquet import new_run_id

    if config is None:
        config = PredictorConfig(model=model, **({"detector": detector} if detector else {}))
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if not isinstance(inputs, ray.data.Dataset):
        inputs = collect_image_paths(inputs)
    ds = map_predict(
        inputs,
        config,
        actors=cluster_actors(actors),
        batch_images=batch_images,
        run_id=run_id or new_run_id(),
    )
    return ds.drop_columns(list(_INTERNAL))


def iter_input_rows(ds: Any) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(input_index, rows)`` per input, as the actors finish them (not input order)."""
    group: list[dict[str, Any]] = []
    index = -1
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            first, i = row.pop("input_first"), row.pop("input_index")
            if first and group:
                yield index, group
                group = []
            index = i
            group.append(row)
    if group:
        yield index, group


__all__ = [
    "DEFAULT_BATCH_IMAGES",
    "PredictActor",
    "RayUnavailable",
    "check_address",
    "cluster_actors",
    "iter_input_rows",
    "map_predict",
    "predict_dataset",
    "ray_session",
    "require_ray",
]
