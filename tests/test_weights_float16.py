"""``.pt`` files stored in float16 (``save_torch_model(..., dtype="float16")``, how the
bundled models ship): half the file, read back as float32 by every reader (the predictor,
``init_from``, calibrate), the meta kept, and the bundled models' predictions within the
parity measured in ``benchmarks/weights_float16.md``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender import Predictor
from agegender.artifact import load_model, save_torch_model
from agegender.bundled import WEIGHTS_DIR
from agegender.errors import torch_load
from agegender.models import TaskSpec, create_model, load_weights, read_state_dict
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(str(p) for p in (REPO / "examples").glob("*.jpg"))
BUNDLED = ("default", "accurate")
#: The last commit whose bundled .pt files held float32 weights.
FLOAT32_REV = load_script("benchmarks/weights_float16.py").FLOAT32_REV
#: Largest change of a reported P(female) the float16 storage may cause (measured on 503
#: photos: see benchmarks/weights_float16.md), and of the age in years.
MAX_DP, MAX_DAGE = 5e-3, 0.15


def small_model():
    torch.manual_seed(0)
    model = create_model("small_cnn", TaskSpec(gender=True, age="dex")).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    cfg = model.default_cfg
    meta = {
        "name": "small",
        "arch": "small_cnn",
        "tasks": {"gender": True, "age": "dex"},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
    }
    return model, meta


def test_float16_file_is_half_and_loads_as_float32(tmp_path: Path) -> None:
    model, meta = small_model()
    f32 = save_torch_model(model, meta, tmp_path / "f32.pt")
    f16 = save_torch_model(model, meta, tmp_path / "f16.pt", dtype="float16")
    assert 0.45 < f16.stat().st_size / f32.stat().st_size < 0.55
    stored = torch_load(f16)["state_dict"]
    own = model.state_dict()
    assert stored.keys() == own.keys()
    for k, v in own.items():  # floats stored in half, integer buffers as they were
        assert stored[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype), k
        if not v.is_floating_point():
            assert torch.equal(stored[k], v), k
    again, meta2 = load_model(f16)
    assert meta2 == torch_load(f32)["meta"]
    for k, v in again.state_dict().items():  # float32 again: the rounded values exactly
        assert v.dtype == own[k].dtype, k
        expected = own[k].half().float() if own[k].is_floating_point() else own[k]
        assert torch.equal(v, expected), k
    x = torch.randn(4, 3, meta["preprocessing"]["input_size"], meta["preprocessing"]["input_size"])
    with torch.no_grad():
        a, b = model(x), again(x)
    assert set(a) == set(b)
    for k in a:
        diff = (a[k] - b[k]).abs().max().item()
        assert 0 < diff < 1e-2, (k, diff)  # rounded, so not identical; close


def test_float16_refuses_what_it_cannot_hold(tmp_path: Path) -> None:
    model, meta = small_model()
    with pytest.raises(ValueError, match="float32 or float16"):
        save_torch_model(model, meta, tmp_path / "m.pt", dtype="bfloat16")
    name, param = next(iter(model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = 1e6
    with pytest.raises(ValueError, match=f"{name}: values beyond float16's range"):
        save_torch_model(model, meta, tmp_path / "m.pt", dtype="float16")
    assert not (tmp_path / "m.pt").exists()


def test_float16_file_as_init_from_and_through_calibrate(tmp_path: Path) -> None:
    """``model.init_from`` (read_state_dict + load_weights) fills a float32 model; calibrate's
    writer replaces the meta and keeps the stored tensors as they are."""
    from agegender.evaluate.calibrate import write_with_meta

    model, meta = small_model()
    f16 = save_torch_model(model, meta, tmp_path / "f16.pt", dtype="float16")
    fresh = create_model("small_cnn", TaskSpec(gender=True, age="dex"))
    report = load_weights(fresh, read_state_dict(f16), source=str(f16))
    assert not any(report.values()), report
    for k, v in fresh.state_dict().items():
        assert v.dtype == model.state_dict()[k].dtype, k
        if v.is_floating_point():
            assert torch.equal(v, model.state_dict()[k].half().float()), k
    out = write_with_meta(f16, tmp_path / "cal.pt", {**meta, "name": "calibrated"})
    a, b = torch_load(f16), torch_load(out)
    assert b["meta"]["name"] == "calibrated"
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    assert all(v.dtype == a["state_dict"][k].dtype for k, v in b["state_dict"].items())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_pt_is_float16_with_its_meta(name: str) -> None:
    """Each bundled .pt: floats in float16 (about 11.5 MB, not 23), its meta that of its
    ONNX file but for the gender decision, calibrated on the .pt's own outputs."""
    from agegender.infer.onnx import read_onnx_meta

    path = WEIGHTS_DIR / f"{name}.pt"
    blob = torch_load(path)
    floats = [v for v in blob["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    params = sum(v.numel() for v in floats)
    assert path.stat().st_size < 2 * params + 200_000  # two bytes a weight, plus the meta
    onnx_meta = read_onnx_meta(WEIGHTS_DIR / f"{name}.onnx")
    differ = {
        k for k in set(blob["meta"]) | set(onnx_meta) if blob["meta"].get(k) != onnx_meta.get(k)
    }
    assert differ <= {"gender_decision", "weights"}, differ  # weights: the int8 record
    assert blob["meta"]["gender_decision"]["chosen_on"] == onnx_meta["gender_decision"]["chosen_on"]


def run(model: str | Path, runtime: str, paths: list[str]) -> list:
    return [
        f
        for r in Predictor.load(model, runtime=runtime, threads=1).predict_paths(paths)
        for f in r.faces
    ]


def assert_parity(a: list, b: list, max_dp: float = MAX_DP, max_dage: float = MAX_DAGE) -> None:
    assert len(a) == len(b) > 0
    dp = max(abs(x.p_female - y.p_female) for x, y in zip(a, b, strict=True))
    dage = max(abs(x.age - y.age) for x, y in zip(a, b, strict=True))
    assert [x.gender for x in a] == [y.gender for y in b]
    assert dp < max_dp and dage < max_dage, (dp, dage)


def test_accurate_float16_pt_agrees_with_its_float32_onnx_on_examples() -> None:
    """``accurate.onnx`` is the float32 export of the float32 weights: the float16 .pt gives
    the same labels and probabilities within the parity on the example photos."""
    assert_parity(run("accurate", "torch", EXAMPLES), run("accurate", "onnxruntime", EXAMPLES))


@pytest.mark.parametrize("name", BUNDLED)
def test_float16_pt_agrees_with_the_former_float32_file(name: str, tmp_path: Path) -> None:
    """Against the float32 .pt it replaced (from git; skipped outside a clone)."""
    path = (WEIGHTS_DIR / f"{name}.pt").resolve()
    if not path.is_relative_to(REPO.resolve()):
        pytest.skip(f"{path}: an installed package, not this clone's file")
    rel = path.relative_to(REPO.resolve()).as_posix()
    proc = subprocess.run(
        ["git", "show", f"{FLOAT32_REV}:{rel}"], cwd=REPO, capture_output=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout:
        pytest.skip(f"the float32 {name}.pt of {FLOAT32_REV[:7]} is not in this checkout's git")
    old = tmp_path / f"{name}.pt"
    old.write_bytes(proc.stdout)
    assert next(iter(torch_load(old)["state_dict"].values())).dtype == torch.float32
    assert_parity(run(old, "torch", EXAMPLES), run(name, "torch", EXAMPLES))


def test_accurate_float16_parity_on_utkface(utkface_dir: Path) -> None:
    """60 UTKFace crops: the float16 .pt against the float32 ONNX export."""
    paths = sorted(str(p) for p in utkface_dir.glob("*.jpg"))
    paths = [paths[i] for i in np.random.default_rng(1).choice(len(paths), 60, replace=False)]
    assert_parity(run("accurate", "torch", paths), run("accurate", "onnxruntime", paths))
