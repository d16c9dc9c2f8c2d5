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
        assert ens.spec.gender_threshold == 0.5
        for image in images:
            f = ens.predict(image).faces[0]
            m = [p.predict(image).faces[0] for p in members]
            assert f.p_female == pytest.approx(np.mean([x.p_female for x in m]), abs=1e-5)
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
