"""ONNX export: same probabilities as PyTorch on real faces, dynamic batch, meta inside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from agegender.cli import app
from agegender.infer import Predictor, save_torch_model
from agegender.infer.onnx import META_KEY, OnnxModel, export_onnx, read_onnx_meta
from agegender.models import TaskSpec, create_model


def make_model(arch: str, age: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = create_model(arch, TaskSpec(gender=True, age=age), **kw).eval()
    cfg = model.default_cfg
    meta = {
        "name": f"test-{arch}",
        "arch": arch,
        "tasks": {"gender": True, "age": age},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
        "model_options": {},
        "metrics": {"val_gender_acc": 0.5},
    }
    return model, meta


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def faces(utkface_dir: Path) -> list[Path]:
    return sorted(utkface_dir.glob("*.jpg"))[100:132]


CASES = [
    ("small_cnn", "groups", {}),
    ("small_cnn", "dex", {}),
    ("small_resnet", "regression", {}),
    ("levi_hassner", "groups", {"input_size": 64}),
]


@pytest.mark.parametrize(("arch", "age", "kw"), CASES, ids=[f"{a}-{g}" for a, g, _ in CASES])
def test_onnx_matches_torch_on_real_faces(
    arch: str, age: str, kw: dict, faces: list[Path], tmp_path: Path
) -> None:
    model, meta = make_model(arch, age, **kw)
    path = export_onnx(model, meta, tmp_path / "m.onnx")
    torch_p = Predictor.from_module(model, meta, detector="none")
    onnx_p = Predictor.load(path, detector="none")
    assert onnx_p.runtime == "onnxruntime" and onnx_p.spec == torch_p.spec
    # the same preprocessed real faces through both runtimes, two batch sizes (dynamic axis)
    batch = torch_p.preprocess([np.asarray(Image.open(f).convert("RGB")) for f in faces])
    for n in (1, len(batch)):
        a, b = torch_p.classify(batch[:n]), onnx_p.classify(batch[:n])
        assert a.keys() == b.keys() == set(torch_p.spec.output_names)
        for k in a:
            assert b[k].shape == a[k].shape
            tol = 1e-4 if k != "age_years" else 1e-3  # years, not probabilities
            assert float(np.abs(a[k] - b[k]).max()) < tol, k
    # probabilities really are probabilities (softmax inside the graph)
    g = onnx_p.classify(batch)["gender_probs"]
    assert np.allclose(g.sum(axis=1), 1.0, atol=1e-5) and (g >= 0).all()
    # whole pipeline: same per-face results
    ra, rb = torch_p.predict(faces[:8]), onnx_p.predict(faces[:8])
    for x, y in zip(ra, rb, strict=True):
        assert abs(x.faces[0].p_female - y.faces[0].p_female) < 1e-4
        assert abs(x.faces[0].age - y.faces[0].age) < 1e-2
        assert x.faces[0].age_group == y.faces[0].age_group


def test_onnx_file_is_self_describing(tmp_path: Path) -> None:
    model, meta = make_model("small_cnn", "dex")
    path = export_onnx(model, meta, tmp_path / "m.onnx", opset=17)
    assert read_onnx_meta(path) == json.loads(json.dumps(meta))
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["gender_probs", "age_probs"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.opset_import[0].version == 17
    assert any(p.key == META_KEY for p in proto.metadata_props)
    m = OnnxModel(path, intra_op_threads=1)
    assert m.spec.age == "dex" and m.output_names == ["gender_probs", "age_probs"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.onnx"
    x = torch.zeros(1, 3)
    torch.onnx.export(torch.nn.Linear(3, 2), (x,), str(plain), dynamo=False)
    with pytest.raises(ValueError, match="no agegender_meta metadata"):
        OnnxModel(plain)
    # a bundled default.onnx may carry its meta in default.json beside it
    sidecar = {  # the layout agegender.artifact.make_meta writes, nothing else
        "arch": "linear",
        "tasks": {"gender": True, "age": "none"},
        "preprocessing": {"input_size": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    (tmp_path / "plain.json").write_text(json.dumps(sidecar))
    assert OnnxModel(plain).spec.arch == "linear"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OnnxModel(junk)
    model, meta = make_model("small_cnn", "groups")
    path = export_onnx(model, meta, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="runtime onnxruntime"):
        Predictor.load(path, runtime="torch")


def test_predictor_onnxruntime_from_module(faces: list[Path]) -> None:
    model, meta = make_model("small_cnn", "groups", seed=2)
    p = Predictor.from_module(model, meta, runtime="onnxruntime", detector="none")
    t = Predictor.from_module(model, meta, runtime="torch", detector="none")
    assert p.runtime == "onnxruntime"
    a, b = p.predict(faces[0]), t.predict(faces[0])
    assert abs(a.faces[0].p_female - b.faces[0].p_female) < 1e-4


def test_cli_export(tmp_path: Path, faces: list[Path]) -> None:
    model, meta = make_model("small_cnn", "groups", seed=4)
    pt = save_torch_model(model, meta, tmp_path / "m.pt")
    out = tmp_path / "exported.onnx"
    res = CliRunner().invoke(app, ["export", str(pt), "--onnx", str(out)])
    assert res.exit_code == 0, res.output
    assert "max |onnx - torch|" in res.output
    p = Predictor.load(out, detector="none")
    assert p.spec.arch == "small_cnn" and p.name == "test-small_cnn"
    res = CliRunner().invoke(app, ["export", str(tmp_path / "no.ckpt"), "--onnx", str(out)])
    assert res.exit_code == 2 and "no such checkpoint" in res.output


def test_cli_export_pt_and_bundled_runtime_choice(
    monkeypatch, tmp_path: Path, faces: list[Path]
) -> None:
    """--pt writes a torch file that reloads to the same probabilities; a bundle holding
    both files runs ONNX by default and the .pt under --runtime torch."""
    import agegender.bundled as bundled

    model, meta = make_model("small_cnn", "dex", seed=5)
    src = save_torch_model(model, meta, tmp_path / "src.pt")
    bundle = tmp_path / "weights"
    bundle.mkdir()
    res = CliRunner().invoke(
        app,
        [
            "export",
            str(src),
            "--pt",
            str(bundle / "default.pt"),
            "--onnx",
            str(bundle / "default.onnx"),
        ],
    )
    assert res.exit_code == 0, res.output
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", bundle)
    onnx_p = Predictor.load(detector="none")
    torch_p = Predictor.load(runtime="torch", detector="none")
    assert (onnx_p.runtime, torch_p.runtime) == ("onnxruntime", "torch")
    a, b = onnx_p.predict(faces[1]).faces[0], torch_p.predict(faces[1]).faces[0]
    assert abs(a.p_female - b.p_female) < 1e-4 and abs(a.age - b.age) < 1e-2
    res = CliRunner().invoke(app, ["export", str(src)])
    assert res.exit_code == 2 and "--onnx" in res.output
    res = CliRunner().invoke(app, ["export", str(src), "--pt", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "must end in .pt" in res.output


def test_checkpoint_goes_through_artifact_load_model(
    monkeypatch, tmp_path: Path, faces: list[Path]
) -> None:
    """A .ckpt is rebuilt by agegender.artifact.load_model (its meta layout parsed as is),
    without importing the training package or Lightning."""
    from agegender.infer import predictor as predictor_mod

    model, _ = make_model("small_cnn", "dex", seed=6)
    meta = {  # the layout agegender.artifact.make_meta writes
        "format": "agegender-checkpoint",
        "arch": "small_cnn",
        "model_options": {},
        "tasks": {"gender": True, "age": "dex"},
        "preprocessing": {
            "resize": 72,
            "input_size": 64,
            "crop": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "labels": {"gender": ["male", "female"]},
    }
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"stand-in")
    calls: list[Path] = []
    import agegender.artifact

    def fake_load(p: Path) -> tuple:
        calls.append(Path(p))
        return model, meta

    monkeypatch.setattr(predictor_mod, "load_model", fake_load)  # Predictor.load
    monkeypatch.setattr(agegender.artifact, "load_model", fake_load)  # agegender export
    p = Predictor.load(ckpt, detector="none")
    assert calls == [ckpt] and p.runtime == "torch" and p.name == "best"
    assert (p.spec.resize, p.spec.input_size, p.spec.age) == (72, 64, "dex")
    out = tmp_path / "best.onnx"
    res = CliRunner().invoke(app, ["export", str(ckpt), "--onnx", str(out)])
    assert res.exit_code == 0, res.output
    a, b = p.predict(faces[0]), Predictor.load(out, detector="none").predict(faces[0])
    assert abs(a.faces[0].age - b.faces[0].age) < 1e-2
