"""Ensembles: several trained models exported as one file that predicts the mean of their
probabilities, with both runtimes, and refuses members that do not fit together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agegender.artifact import ENSEMBLE_ARCH, ensemble_meta, load_model
from agegender.cli import app
from agegender.infer import Predictor, save_torch_model
from agegender.models import TaskSpec, create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _member(tmp_path: Path, seed: int, age: str = "dex", size: int = 32) -> Path:
    torch.manual_seed(seed)
    model = create_model("small_cnn", TaskSpec(gender=True, age=age), input_size=size).eval()
    meta = {
        "name": f"m{seed}",
        "arch": "small_cnn",
        "tasks": {"gender": True, "age": age},
        "preprocessing": {"input_size": size, "resize": size, "mean": [0.5] * 3, "std": [0.5] * 3},
        "model_options": {},
        "gender_decision": {"threshold": 0.3},  # a member's own decision is not the ensemble's
    }
    return save_torch_model(model, meta, tmp_path / f"m{seed}_{age}_{size}.pt")


@pytest.mark.parametrize("age", ["dex", "regression"])
def test_exported_ensemble_is_the_mean_of_its_members(tmp_path: Path, age: str) -> None:
    a, b = _member(tmp_path, 1, age), _member(tmp_path, 2, age)
    onnx, pt = tmp_path / "ens.onnx", tmp_path / "ens.pt"
    res = CliRunner().invoke(
        app, ["export", str(a), str(b), "--onnx", str(onnx), "--pt", str(pt), "--name", "pair"]
    )
    assert res.exit_code == 0, res.output
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    members = [Predictor.load(p, detector="none") for p in (a, b)]
    for path in (onnx, pt):
        ens = Predictor.load(path, detector="none")
        assert ens.spec.arch == ENSEMBLE_ARCH and ens.name == "pair"
        assert ens.spec.gender_decision.identity  # decides at 0.5 until calibrated itself
        for image in images:
            f = ens.predict(image).faces[0]
            m = [p.predict(image).faces[0] for p in members]
            # the mean of the members' networks (not of their own calibrated reports)
            assert f.p_female == pytest.approx(np.mean([x.p_female_raw for x in m]), abs=1e-5)
            assert f.p_female + f.p_male == pytest.approx(1.0, abs=1e-6)
            if age == "dex":
                mean_probs = np.mean([x.age_probs for x in m], axis=0)
                assert np.allclose(f.age_probs, mean_probs, atol=1e-5)
            assert f.age == pytest.approx(np.mean([x.age for x in m]), abs=1e-3)
        assert (
            ens.predict(images[0]).faces[0].p_female
            != members[0].predict(images[0]).faces[0].p_female
        )
    # the .pt rebuilds strictly, its meta keeps each member's own
    model, meta = load_model(pt)
    assert len(model.members) == 2 and [m["name"] for m in meta["members"]] == ["m1", "m2"]
    assert "gender_decision" not in meta and meta["members_from"] == [str(a), str(b)]


def test_members_must_fit_together(tmp_path: Path) -> None:
    a, small = _member(tmp_path, 1), _member(tmp_path, 3, size=40)
    groups = _member(tmp_path, 4, age="groups")
    for other, key in ((small, "input_size"), (groups, "age")):
        res = CliRunner().invoke(
            app, ["export", str(a), str(other), "--pt", str(tmp_path / "x.pt")]
        )
        assert res.exit_code == 2, res.output
        assert (
            len(res.output.strip().splitlines()) == 1
            and f"differs from model 1 in {key}" in res.output
        )
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="at least 2"):
        ensemble_meta([load_model(a)[1]])


def test_members_over_one_frozen_trunk_share_it(tmp_path: Path) -> None:
    """Members fine-tuned from the same frozen blocks run those blocks once, store them
    once, and still give the mean of the members' probabilities."""
    import copy

    from agegender.models.ensemble import Ensemble, shared_prefix

    a_path = _member(tmp_path, 1)
    a, meta = load_model(a_path)
    b = copy.deepcopy(a)
    n_blocks = len(a.backbone_blocks())
    assert n_blocks >= 2
    with torch.no_grad():
        for p in b.backbone_blocks()[-1].parameters():
            p.add_(0.05)
        for p in b.heads.parameters():
            p.mul_(1.5)
    assert shared_prefix([a, b]) == n_blocks - 1
    b_path = save_torch_model(b, {**meta, "name": "b"}, tmp_path / "b.pt")
    pt = tmp_path / "shared.pt"
    res = CliRunner().invoke(app, ["export", str(a_path), str(b_path), "--pt", str(pt)])
    assert res.exit_code == 0, res.output
    model, ens_meta = load_model(pt)
    assert ens_meta["shared_blocks"] == n_blocks - 1
    assert isinstance(model, Ensemble)
    assert model.members[1].backbone[0] is model.members[0].backbone[0]  # tied, run once
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = model(x)["gender"].softmax(-1)
        want = (a.eval()(x)["gender"].softmax(-1) + b.eval()(x)["gender"].softmax(-1)) / 2
    assert torch.allclose(got, want, atol=1e-5)
    unshared = save_torch_model(
        Ensemble([a, copy.deepcopy(b)], "dex"), {**ens_meta, "shared_blocks": 0}, tmp_path / "u.pt"
    )
    assert pt.stat().st_size < unshared.stat().st_size  # the trunk is stored once


def test_interpolated_export_mixes_every_weight(tmp_path: Path) -> None:
    """export --interpolate ALPHA: one model of the same network whose every tensor is
    (1 - ALPHA) * START + ALPHA * END (WiSE-FT); ALPHA 0 and 1 give back the two ends."""
    a, b = _member(tmp_path, 1), _member(tmp_path, 2)
    (ma, _), (mb, _) = load_model(a), load_model(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for alpha in (0.0, 0.3, 1.0):
        pt, onnx = tmp_path / f"w{alpha}.pt", tmp_path / f"w{alpha}.onnx"
        res = CliRunner().invoke(
            app,
            ["export", str(a), str(b), "--interpolate", str(alpha), "--pt", str(pt)]
            + ["--onnx", str(onnx)],
        )
        assert res.exit_code == 0, res.output
        model, meta = load_model(pt)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                assert torch.allclose(v, (1 - alpha) * sa[k] + alpha * sb[k], atol=1e-6), k
        w = meta["weights"]["interpolated"]
        assert w["alpha"] == alpha and w["from"] == [str(a), str(b)]
        assert "gender_decision" not in meta  # calibrate it again
        p_pt = Predictor.load(pt, detector="none").predict(image).faces[0].p_female
        p_onnx = Predictor.load(onnx, detector="none").predict(image).faces[0].p_female
        assert p_pt == pytest.approx(p_onnx, abs=1e-5)
        if alpha in (0.0, 1.0):
            end = Predictor.load(a if alpha == 0 else b, detector="none")
            assert p_pt == pytest.approx(end.predict(image).faces[0].p_female_raw, abs=1e-6)
    mid = Predictor.load(tmp_path / "w0.3.pt", detector="none").predict(image).faces[0]
    ends = [Predictor.load(p, detector="none").predict(image).faces[0] for p in (a, b)]
    assert mid.p_female not in (ends[0].p_female_raw, ends[1].p_female_raw)


def test_interpolation_refuses_what_is_not_one_network(tmp_path: Path) -> None:
    a, b, small = _member(tmp_path, 1), _member(tmp_path, 2), _member(tmp_path, 3, size=40)
    cases = [
        ([a, small, "--interpolate", "0.5"], "differs from model 1 in input_size"),
        ([a, "--interpolate", "0.5"], "--interpolate takes two checkpoints"),
        ([a, b, b, "--interpolate", "0.5"], "--interpolate takes two checkpoints"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(app, ["export", *map(str, args), "--pt", str(tmp_path / "x.pt")])
        assert res.exit_code == 2, res.output
        assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    res = CliRunner().invoke(
        app, ["export", str(a), str(b), "--interpolate", "1.5", "--pt", str(tmp_path / "x.pt")]
    )
    assert res.exit_code == 2 and not (tmp_path / "x.pt").exists()


def _photos(folder: Path, n: int, size: int = 32, suffix: str = ".png") -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i}{suffix}"
        )
    return folder


def test_int8_export_is_quantized_and_close_to_float(tmp_path: Path) -> None:
    """export --quantize int8: the convolutions run in int8 (QDQ, int8 weights), ranges set
    on the calibration faces, the record in the meta, outputs close to the float model."""
    import onnx as onnx_lib

    src = _member(tmp_path, 1)
    photos = _photos(tmp_path / "cal", 24)
    out = tmp_path / "q.onnx"
    res = CliRunner().invoke(
        app,
        ["export", str(src), "--onnx", str(out), "--quantize", "int8"]
        + ["--calibration", str(photos), "--calibration-faces", "16", "--detector", "none"],
    )
    assert res.exit_code == 0, res.output
    assert "int8, calibrated on 16 faces" in res.output and "agree on" in res.output
    graph = onnx_lib.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    convs = ops.count("Conv")
    assert convs > 0 and ops.count("DequantizeLinear") >= 2 * convs
    int8 = {i.name for i in graph.initializer if i.data_type == onnx_lib.TensorProto.INT8}
    assert len(int8) >= convs  # every conv's weights stored as int8
    q = Predictor.load(out, detector="none")
    record = q.meta["weights"]["quantized"]
    assert record["dtype"] == "int8" and record["calibration_faces"] == 16
    assert record["calibration_from"] == [str(photos)]
    assert record["faces"] == 16 and 0.9 <= record["gender_agreement"] <= 1.0
    # 7-bit weights: fused int8 kernels on every CPU, without int8 dot products too
    assert record["reduce_range"] is True and q.backend.int8_fused is True
    f = Predictor.load(src, detector="none")
    batch, owners = f.face_batch(sorted(photos.iterdir()), largest=True)
    assert batch.shape == (24, 3, 32, 32) and owners.tolist() == list(range(24))
    a, b = f.classify(batch), q.classify(batch)
    assert np.abs(a["gender_probs"] - b["gender_probs"]).max() < 0.05
    years = np.arange(a["age_probs"].shape[1])
    assert np.abs(a["age_probs"] @ years - b["age_probs"] @ years).max() < 2.0


def test_int8_export_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    src, empty = _member(tmp_path, 1), tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("", encoding="utf-8")
    photos = _photos(tmp_path / "cal", 4)
    q = tmp_path / "q.onnx"
    cases = [
        (["--onnx", str(q), "--quantize", "fp16", "--calibration", str(photos)], "only choice"),
        (["--pt", str(tmp_path / "x.pt"), "--quantize", "int8"], "writes an ONNX file"),
        (["--onnx", str(q), "--quantize", "int8"], "needs --calibration"),
        (["--onnx", str(q), "--calibration", str(photos)], "goes with --quantize"),
        (["--onnx", str(q), "--quantize", "int8", "--calibration", str(empty / "x")], "no such"),
        (
            ["--onnx", str(q), "--quantize", "int8", "--calibration", str(photos)]
            + ["--detector", "none"],
            "only 4 faces found",
        ),
    ]
    for args, message in cases:
        res = CliRunner().invoke(app, ["export", str(src), *args])
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and message in res.output, res.output
    assert not q.exists()


def test_bench_times_the_given_int8_onnx_file(tmp_path: Path) -> None:
    """bench predict --onnx FILE: the ONNX figures come from that file (an int8 export of
    the model), and the result says so; a file of another input size is refused."""
    from agegender.infer.bench import bench_predict

    src = _member(tmp_path, 1)
    photos = _photos(tmp_path / "cal", 16, size=64, suffix=".jpg")
    q = tmp_path / "q.onnx"
    res = CliRunner().invoke(
        app,
        ["export", str(src), "--onnx", str(q), "--quantize", "int8", "--calibration"]
        + [str(photos), "--detector", "none"],
    )
    assert res.exit_code == 0, res.output
    empty = tmp_path / "no_real_photos"
    empty.mkdir()
    kw = {"face_dir": photos, "photos": 4, "seconds": 0.1, "detector": "none"}
    figures = bench_predict(str(src), real_photos=empty, onnx_file=q, **kw)
    assert figures["onnx_weights"] == "int8" and figures["onnx_file"] == str(q)
    assert figures["faces_per_s_batch64_onnx"] > 0 and figures["photos_per_s_end_to_end"] > 0
    plain = bench_predict(str(src), real_photos=empty, **kw)
    assert plain["onnx_weights"] == "float32" and plain["onnx_file"] == "exported from the model"
    other = _member(tmp_path, 3, size=40)
    res = CliRunner().invoke(app, ["export", str(other), "--onnx", str(tmp_path / "o.onnx")])
    assert res.exit_code == 0, res.output
    with pytest.raises(ValueError, match="not the same model"):
        bench_predict(str(src), real_photos=empty, onnx_file=tmp_path / "o.onnx", **kw)
