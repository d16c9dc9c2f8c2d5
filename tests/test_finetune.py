"""Fine-tuning: bundled names wherever a model file is accepted, DEX from age groups, and
``agegender finetune`` end to end on a tiny generated dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from agegender import bundled
from agegender.cli import app
from agegender.data.records import AGE_GROUP_NAMES, ages_to_groups


# ------------------------------------------------------------------------ bundled names
def test_bundled_names_resolve_to_their_files() -> None:
    assert bundled.resolve_model("accurate", "torch") == bundled.WEIGHTS_DIR / "accurate.pt"
    assert bundled.resolve_model("accurate") == bundled.WEIGHTS_DIR / "accurate.onnx"
    assert bundled.weights_file("accurate") == str(bundled.WEIGHTS_DIR / "accurate.pt")
    assert bundled.weights_file("default") == str(bundled.WEIGHTS_DIR / "default.pt")
    for path in ("runs/x/best.ckpt", "accurate.pt", "some/accurate", "nope"):
        assert bundled.weights_file(path) is None, path
    with pytest.raises(bundled.NoModelError, match="neither a file nor a bundled model"):
        bundled.resolve_model("acurate")


@pytest.mark.parametrize("name", ["default", "accurate"])
def test_bundled_recipe_comes_from_the_card(name: str) -> None:
    recipe, file = bundled.bundled_recipe(name)
    assert file.startswith("configs/face/") and file.endswith(".yaml")
    assert recipe["model"]["name"] == "dlib_resnet29"
    assert recipe["task"]["age"] == "dex" and recipe["data"]["align"] is True
    # the card's recipe is the config file it names, as the repository has it
    import yaml

    repo_file = Path(__file__).resolve().parents[1] / file
    if repo_file.is_file():
        assert yaml.safe_load(repo_file.read_text()) == recipe


def test_calibrate_accepts_a_bundled_name(monkeypatch, tmp_path: Path) -> None:
    """``agegender calibrate accurate``: the name reaches the predictor as the bundled file
    (the face path itself is tested in test_calibrate.py)."""
    import agegender.evaluate.calibrate as cal
    from agegender.infer import Predictor

    seen = {}

    def fake_load(source, **kw):
        seen["source"] = source
        raise RuntimeError("stop here")

    monkeypatch.setattr(Predictor, "load", staticmethod(fake_load))
    with pytest.raises(RuntimeError, match="stop here"):
        cal.calibrate_model("accurate", tmp_path / "val.csv", tmp_path / "out.onnx")
    assert seen["source"] == bundled.WEIGHTS_DIR / "accurate.onnx"


# ------------------------------------------------------------------------ DEX from groups
def test_dex_group_nll_is_minus_log_of_the_groups_mass() -> None:
    from agegender.train.module import dex_group_nll

    torch.manual_seed(0)
    logits = torch.randn(5, 101)
    groups = torch.tensor([0, 3, 7, -1, 4])
    got = dex_group_nll(logits, groups).numpy()
    p = torch.softmax(logits, -1).numpy()
    of_year = ages_to_groups(np.arange(101, dtype=float))
    for i, g in enumerate(groups.tolist()):
        want = 0.0 if g < 0 else -np.log(p[i, of_year == g].sum())
        assert got[i] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_dex_loss_learns_age_groups_alone() -> None:
    """Faces with a group and no exact age: the loss falls and the mass moves into each
    face's group (years spread as the model likes within it); a face with an exact age
    still gets DEX's own cross-entropy."""
    from agegender.train.module import dex_loss

    torch.manual_seed(0)
    logits = torch.zeros(8, 101, requires_grad=True)
    groups = torch.arange(8)
    ages = torch.full((8,), float("nan"))
    opt = torch.optim.Adam([logits], lr=0.1)
    losses = []
    for _ in range(40):
        loss = dex_loss(logits, ages, age_group=groups)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0]
    mass = torch.softmax(logits.detach(), -1).numpy()
    of_year = ages_to_groups(np.arange(101, dtype=float))
    assert all(mass[g, of_year == g].sum() > 0.9 for g in range(8))
    # an exact age wins over its group; no label at all adds nothing
    exact = torch.tensor([30.0, float("nan")])
    both = dex_loss(logits[:2].detach(), exact, age_group=torch.tensor([0, -1]))
    plain = torch.nn.functional.cross_entropy(logits[:1].detach(), torch.tensor([30]))
    assert float(both) == pytest.approx(float(plain), rel=1e-5)


# ------------------------------------------------------------------------ finetune
def _manifest(root: Path, out: Path) -> Path:
    """The tiny generated faces (not the broken file) as a CSV manifest with age groups
    only and people of up to 8 photos each (one gender per person)."""
    rows = []
    images = [p for p in sorted(root.glob("*.chip.jpg")) if p.stat().st_size > 100]
    for i, p in enumerate(images):
        age, female = p.name.split("_")[:2]
        group = int(ages_to_groups(np.array([float(age)]))[0])
        rows.append(
            {
                "path": str(p),
                "gender": "f" if female == "1" else "m",
                "age": AGE_GROUP_NAMES[group],
                "subject": f"p{int(female)}_{i // 8}",
            }
        )
    frame = pd.DataFrame(rows)
    frame.to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def finetuned(tiny_config: Path, tiny_utkface: Path, tmp_path_factory, one_torch_thread):
    from types import SimpleNamespace

    from agegender.train import train

    base = tmp_path_factory.mktemp("ft")
    source = train(
        tiny_config, base / "source", overrides=["train.epochs=1"], printer=lambda _: None
    )
    data = _manifest(tiny_utkface, base / "groups_only.csv")
    with pytest.MonkeyPatch.context() as mp:  # a threshold from the few validation faces
        mp.setattr("agegender.evaluate.calibrate.MIN_FACES_PER_GENDER", 3)
        run = CliRunner().invoke(
            app,
            [
                "finetune",
                str(source.best_checkpoint),
                "--data",
                str(data),
                "--out",
                str(base / "mine"),
                "--detector",
                "none",
                *("--set", "train.epochs=3", "--set", "train.batch_size=16"),
                *("--set", "logger.csv=true", "--set", "data.split=[0.5,0.5]"),
            ],
            catch_exceptions=False,
        )
    assert run.exit_code == 0, run.output
    assert "done: 3 epochs" in run.output and "gender threshold" in run.output
    out = base / "mine"
    res = SimpleNamespace(
        out_dir=out, model_pt=out / "model.pt", model_onnx=out / "model.onnx", output=run.output
    )
    return res, data


def test_finetune_writes_checkpoint_onnx_and_card(finetuned) -> None:
    res, data = finetuned
    out = res.out_dir
    for name in ("model.pt", "model.onnx", "MODEL_CARD.md", "finetune.json", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "best.ckpt").is_file()
    card = (out / "MODEL_CARD.md").read_text()
    assert "fine-tuned from" in card and "```yaml" in card and str(data) in card
    s = json.loads((out / "finetune.json").read_text())
    assert s["labels"] == {"gender": True, "age": True} and s["gamma"] == 0.7
    # group-only ages trained the DEX head (no 'exact ages needed' refusal)
    rows = pd.read_csv(out / "metrics.csv")
    age_loss = rows["train/loss_age"].dropna().to_numpy()
    assert len(age_loss) == 3 and np.isfinite(age_loss).all() and (age_loss > 0).all()
    # validation people are not training people: their counts add up to everyone
    val = s["validation"]
    people = pd.read_csv(data)["subject"].nunique()
    assert val["people"] + val["train_people"] == people and val["people"] >= 2


def test_finetuned_onnx_matches_torch(finetuned, tiny_utkface: Path) -> None:
    from agegender.infer import Predictor

    res, _ = finetuned
    files = sorted(tiny_utkface.glob("*.chip.jpg"))[:6]
    onnx = Predictor.load(res.model_onnx, detector="none").predict(files)
    pt = Predictor.load(res.model_pt, runtime="torch", detector="none").predict(files)
    for a, b in zip(onnx, pt, strict=True):
        assert a.faces[0].p_female == pytest.approx(b.faces[0].p_female, abs=1e-4)
        assert a.faces[0].age == pytest.approx(b.faces[0].age, abs=1e-2)
        assert a.faces[0].gender == b.faces[0].gender


def test_finetuned_threshold_is_chosen_on_the_validation_people(finetuned, monkeypatch) -> None:
    from agegender.artifact import load_model
    from agegender.data.prepare import read_rows
    from agegender.evaluate.calibrate import choose_threshold
    from agegender.evaluate.photos import predict_photos
    from agegender.infer import Predictor
    from agegender.infer.onnx import read_onnx_meta

    res, data = finetuned
    _, meta = load_model(res.model_pt)
    decision = meta["gender_decision"]
    val_csv = res.out_dir / "val_photos.csv"
    assert decision["chosen_on"] == str(val_csv)
    val = pd.read_csv(val_csv)
    everyone = pd.read_csv(data)
    assert decision["photos"] == len(val) < len(everyone)
    assert read_onnx_meta(res.model_onnx)["gender_decision"]["threshold"] == decision["threshold"]
    assert meta["config"]["model"]["init_from"].endswith("best.ckpt")  # can fine-tune again
    # the same rule on the validation photos' network outputs gives the stored threshold
    predictor = Predictor.load(res.model_pt, runtime="torch", detector="none")
    frame, _ = predict_photos(predictor, read_rows(val_csv, "csv", audit=False).table)
    monkeypatch.setattr("agegender.evaluate.calibrate.MIN_FACES_PER_GENDER", 3)
    again = choose_threshold(frame["gender"], frame["p_female_raw"], decision["rule"])
    assert again["threshold"] == pytest.approx(decision["threshold"], abs=1e-6)


def test_finetune_config_keeps_the_recipe_and_takes_overrides(tmp_path: Path) -> None:
    from agegender.config import ConfigError
    from agegender.finetune import finetune_config, start_from

    source = start_from("accurate")
    assert source.weights == bundled.WEIGHTS_DIR / "accurate.pt"
    cfg = finetune_config(
        source, tmp_path, format="csv", overrides=["train.epochs=2"], labels=(True, False)
    )
    assert cfg.model.init_from == str(bundled.WEIGHTS_DIR / "accurate.pt")
    assert cfg.data.path == str(tmp_path.resolve()) and cfg.data.extra in (None, [])
    assert cfg.data.align is True and cfg.data.size == 150 and cfg.model.precompute_blocks == 11
    assert cfg.train.epochs == 2 and cfg.task.age == "dex"
    assert cfg.task.gamma == 1.0  # gender-only photos: the age head is kept, not trained
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        finetune_config(source, tmp_path, overrides=["optim.lr=-1"])


def test_finetune_cli_refuses_an_onnx_file(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "finetune",
            str(bundled.WEIGHTS_DIR / "accurate.onnx"),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 2
    assert "an ONNX file cannot be fine-tuned" in res.output


# ------------------------------------------------------------------------ config keys
def test_config_keys_take_a_bundled_name(config_data_root: Path, tmp_path: Path) -> None:
    """``model.init_from`` and ``distill.teacher`` accept a bundled model's name, in the
    file and through ``--set``: it becomes the bundled PyTorch file, which the pre-run
    check reads as weights."""
    from agegender.config import check_files, load_config

    pt = str(bundled.WEIGHTS_DIR / "accurate.pt")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        f"data: {{path: {tmp_path}}}\n"
        "model: {name: dlib_resnet29, init_from: accurate}\n"
        "task: {gender: true, age: dex}\n"
        "distill: {teacher: default}\n"
    )
    cfg = load_config(cfg_file)
    assert cfg.model.init_from == pt
    assert cfg.distill.teacher == str(bundled.WEIGHTS_DIR / "default.pt")
    cfg = load_config(cfg_file, ["model.init_from=default", "distill.teacher=accurate"])
    assert cfg.model.init_from == str(bundled.WEIGHTS_DIR / "default.pt")
    assert cfg.distill.teacher == pt
    check_files(cfg)  # the bundled files exist and hold tensors
    # a path is still a path, relative to the config file (or the working dir for --set)
    cfg = load_config(cfg_file, ["model.init_from=runs/x/best.ckpt"])
    assert cfg.model.init_from == str(Path.cwd() / "runs/x/best.ckpt")


def test_task_labels_gender_only_and_groups_only(tmp_path: Path) -> None:
    """DEX trains on Adience groups alone (no 'exact ages needed' refusal); photos with no
    age label at all are accepted when the age term has no weight (task.gamma 1)."""
    from agegender.config import ConfigError
    from agegender.config.load import validate_config
    from agegender.train.data import _check_labels

    def config(gamma: float):
        raw = {"data": {"path": str(tmp_path)}, "model": {"name": "small_cnn"}}
        raw["task"] = {"gender": True, "age": "dex", "gamma": gamma}
        return validate_config(raw)

    groups_only = pd.DataFrame(
        {"gender": [0, 1, None], "age": [np.nan] * 3, "age_group": pd.array([4, None, 1])}
    )
    assert len(_check_labels(config(0.5), groups_only)) == 3  # each row has a label it uses
    gender_only = groups_only.assign(age_group=pd.array([None] * 3, dtype="Int64"))
    with pytest.raises(ConfigError, match=r"exact ages or age groups needed for 'dex'"):
        _check_labels(config(0.5), gender_only)
    assert len(_check_labels(config(1.0), gender_only)) == 2  # the unlabelled row left out


def test_gender_only_photos_keep_the_age_head_and_few_people_keep_0_5(
    finetuned, tmp_path: Path
) -> None:
    """Photos without ages: the age term gets weight 0 and the model still predicts ages;
    fewer validation people of a gender than the threshold rule needs (20; photos of one
    person count once): no threshold is chosen, the network's 0.5 stays, the card says so."""
    from agegender.artifact import load_model
    from agegender.finetune import finetune
    from agegender.infer import Predictor

    res, data = finetuned
    rows = pd.read_csv(data).drop(columns="age")
    gender_only = tmp_path / "gender_only.csv"
    rows.to_csv(gender_only, index=False)
    out = finetune(
        str(res.model_pt),
        gender_only,
        tmp_path / "again",
        overrides=["train.epochs=1", "train.batch_size=16"],
        detector="none",
        printer=lambda _: None,
    )
    s = out.summary
    assert s["labels"] == {"gender": True, "age": False} and s["gamma"] == 1.0
    assert s["gender_decision"] is None and "people of each gender" in s["not_calibrated"]
    assert s["source"]["model"] == str(res.model_pt)  # a finetune's model.pt starts another
    _, meta = load_model(out.model_pt)
    assert "gender_decision" not in meta
    assert "Not recalibrated" in out.card.read_text()
    face = Predictor.load(out.model_onnx, detector="none").predict(rows["path"][0]).faces[0]
    assert face.age is not None and len(face.age_probs) == 101
