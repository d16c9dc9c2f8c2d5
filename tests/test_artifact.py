"""agegender.artifact: the meta written by training is the meta read by inference, the
files round-trip, outputs become probabilities one way, and inference stands alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.artifact import (
    load_model,
    output_probabilities,
    parse_meta,
    preprocess_crops,
    save_torch_model,
)
from agegender.data.records import ages_to_groups
from agegender.models import TaskSpec, create_model
from agegender.readout import AGE_OUTPUTS, GENDER_OUTPUT, dex_group_matrix


def make_model(age: str = "groups"):
    torch.manual_seed(0)
    model = create_model("small_cnn", TaskSpec(gender=True, age=age)).eval()
    cfg = model.default_cfg
    meta = {
        "name": "test-small_cnn",
        "arch": "small_cnn",
        "tasks": {"gender": True, "age": age},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
    }
    return model, meta


def test_parse_meta_reads_what_make_meta_writes() -> None:
    """The artifact's reader takes exactly the writer's layout, and names what is missing."""
    from agegender.artifact import make_meta
    from agegender.config import Config

    cfg = Config.model_validate(
        {"data": {"path": "."}, "model": {"name": "small_cnn"}, "task": {"age": "dex"}}
    )
    meta = make_meta(cfg, size=72, input_size=64, code_version="test")
    spec = parse_meta(meta, name="m")
    assert (spec.name, spec.arch, spec.input_size, spec.resize, spec.age) == (
        "m",
        "small_cnn",
        64,
        72,
        "dex",
    )
    assert spec.gender and spec.output_names == ["gender_probs", "age_probs"]
    assert spec.template == tuple(tuple(p) for p in meta["face_crop"]["template"])
    with pytest.raises(ValueError, match="input_size"):
        parse_meta({"arch": "x", "tasks": {"gender": True}})
    with pytest.raises(ValueError, match="no tasks"):
        parse_meta({"arch": "x", "preprocessing": meta["preprocessing"]})
    with pytest.raises(ValueError, match="age mode"):
        parse_meta({**meta, "tasks": {"gender": True, "age": "decades"}})


def test_prediction_does_not_import_training_or_lightning(tmp_path: Path) -> None:
    """The artifact and the predictor stand alone: a .pt and a .ckpt-free ONNX model load
    and predict without the training package or Lightning being imported."""
    import subprocess
    import sys

    model, meta = make_model()
    pt = save_torch_model(model, meta, tmp_path / "m.pt")
    code = f"""
import sys
from agegender.infer import Predictor
for m in ("default", {str(pt)!r}):
    r = Predictor.load(m).predict("{Path(__file__).parents[1] / "examples" / "man_40-49.jpg"}")
    assert r.faces, r.error
bad = sorted(k for k in sys.modules if k.split(".")[0] in ("lightning", "pytorch_lightning"))
bad += [k for k in sys.modules if k.startswith("agegender.train")]
assert not bad, bad
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("age", ["groups", "dex", "regression"])
def test_pt_round_trip_and_probabilities(age: str, tmp_path: Path) -> None:
    model, meta = make_model(age)
    path = save_torch_model(model, meta, tmp_path / "m.pt")
    again, meta2 = load_model(path)
    assert meta2["arch"] == "small_cnn" and meta2["tasks"]["age"] == age
    x = torch.randn(3, 3, meta["preprocessing"]["input_size"], meta["preprocessing"]["input_size"])
    with torch.no_grad():
        a = output_probabilities(model(x), age)
        b = output_probabilities(again(x), age)
    assert torch.allclose(a["gender"], b["gender"]) and torch.allclose(a["age"], b["age"])
    assert torch.allclose(a["gender"].sum(-1), torch.ones(3))
    if age == "regression":
        assert a["age"].shape == (3,)
    else:
        assert torch.allclose(a["age"].sum(-1), torch.ones(3), atol=1e-5)
    spec = parse_meta(meta)
    assert spec.output_names == [GENDER_OUTPUT, AGE_OUTPUTS[age]]


def test_dex_group_matrix_and_preprocessing() -> None:
    m = dex_group_matrix(101)
    assert m.shape == (101, 8) and (m.sum(1) == 1).all()
    assert (m.argmax(1) == ages_to_groups(np.arange(101, dtype=float))).all()
    _, meta = make_model()
    spec = parse_meta(meta)
    crops = [np.full((120, 120, 3), 255, np.uint8), np.zeros((40, 40, 3), np.uint8)]
    batch = preprocess_crops(crops, spec)
    s = spec.input_size
    assert batch.shape == (2, 3, s, s) and batch.dtype == np.float32
    white = (1.0 - np.asarray(spec.mean)) / np.asarray(spec.std)
    assert np.allclose(batch[0, :, 0, 0], white, atol=1e-5)
