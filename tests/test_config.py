"""Config schema: YAML loading, --set overrides, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import agegender.config.paths
from agegender.config import (
    ConfigError,
    DataRootError,
    apply_overrides,
    expand_path,
    load_config,
    parse_override,
    validate_config,
)
from agegender.train.data import resolve_sizes

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
#: run configs in sub-folders (benchmark rows, studies); configs/sweeps holds sweep files and
#: configs/reference/rows.yaml lists the reference rows (tests/test_reference.py reads it)
STUDY_CONFIGS = sorted(
    p
    for p in (REPO / "configs").glob("*/*.yaml")
    if p.parent.name != "sweeps" and p.name != "rows.yaml"
)


@pytest.fixture(autouse=True)
def _data_root(config_data_root: Path) -> None:
    """Configs name ``${AGEGENDER_DATA}``; validating them reads no data, so without the
    data a temporary root stands in (conftest's ``config_data_root``)."""


@pytest.fixture()
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "sub" / "run.yaml"
    p.parent.mkdir()
    p.write_text(
        "data:\n  path: data/faces\n  size: 48\nmodel:\n  name: small_cnn\n"
        "optim:\n  lr: 0.01\naugment:\n  recipe:\n    - hflip\n    - rotation: 15\n",
        encoding="utf-8",
    )
    return p


def test_minimal_config_defaults_and_relative_paths(cfg_file: Path) -> None:
    c = load_config(cfg_file)
    assert c.data.path == str(cfg_file.parent / "data" / "faces")  # relative to the file
    assert c.model.name == "small_cnn" and c.optim.lr == 0.01 and c.optim.name == "adamw"
    assert c.task.gender and c.task.age == "groups" and c.task.gamma == 0.5
    assert [op.op for op in c.augment.recipe] == ["hflip", "rotation"]
    assert c.augment.recipe[1].degrees == 15 and c.augment.recipe[0].p == 0.5
    assert c.train.early_stopping.resolved_mode == "min"


def test_set_overrides_parse_yaml_values(cfg_file: Path, monkeypatch) -> None:
    monkeypatch.chdir(cfg_file.parent.parent)
    c = load_config(
        cfg_file,
        [
            "optim.lr=3e-4",
            "data.split=[0.4, 0.3, 0.3]",
            "task.age=none",
            "train.early_stopping.patience=null",
            "model.head_hidden=[32, 16]",
            "augment.recipe.1.degrees=5",
            "data.folds_file=folds.csv",  # --set paths: relative to the working directory
            "trainer.devices=2",
        ],
    )
    assert c.optim.lr == 3e-4
    assert c.data.split == [0.4, 0.3, 0.3]
    assert c.task.age == "none"
    assert c.train.early_stopping.patience is None
    assert c.model.head_hidden == [32, 16]
    assert c.augment.recipe[1].degrees == 5
    assert c.data.folds_file == str(cfg_file.parent.parent / "folds.csv")
    assert c.trainer.devices == 2


def test_parse_override_errors() -> None:
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x.0.y=true") == (["x", 0, "y"], True)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"optim": {"lr": 1}}, ["optim.lr.x=2"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-0.1"], "optim.lr: must be > 0 (got -0.1)"),
        (["model.name=resnet19"], "model.name: unknown model 'resnet19'; did you mean resnet18?"),
        (["task.gamma=1.5"], "task.gamma: must be within [0, 1] (got 1.5)"),
        (["optim.lrr=0.1"], "optim.lrr: unknown key; did you mean lr?"),
        (["trainer.strategy=dpp"], "trainer.strategy: unknown strategy 'dpp'; did you mean ddp?"),
        (["augment.recipe=[{rotaton: 5}]"], "unknown augmentation op 'rotaton'; did you mean"),
        (["augment.recipe=[{hflip: 1.5}]"], "augment.recipe[0].p: must be within [0, 1] (got 1.5)"),
        (["train.epochs=abc"], "train.epochs: must be an integer (got 'abc')"),
        (["data.split=[0.5, 0.6]"], "data.split: fractions must sum to 1"),
        (["model.unfreeze_at_epoch=3"], "model.unfreeze_at_epoch: needs model.freeze_backbone"),
        (["task.age=foo"], "task.age: must be one of"),
        (["train.early_stopping.monitor=val/age_mae"], "train.early_stopping.monitor: 'val/age_m"),
        (["model.head=mlp"], "model.head: model 'small_cnn' does not take this option"),
        (["model.dropout=[0.5, 1.2]"], "model.dropout: must be within [0, 1)"),
        (["task.gender=false", "task.age=none"], "task: nothing to learn"),
        (["task.age_sigma=2"], "task.age_sigma: only for task.age: dex (got 'groups')"),
        (["task.age=dex", "task.age_l1=-1"], "task.age_l1: must be >= 0"),
        (["train.batch_size=0"], "train.batch_size: must be >= 1 (got 0)"),
        (["data.val_fold=1"], "data.val_fold: needs data.fold"),
        (["augment.recipe=[random_crop, resized_crop]"], "random_crop or resized_crop, not both"),
    ],
)
def test_errors_name_the_key(cfg_file: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text  # one line
    assert text.startswith(str(cfg_file))  # names the file


def test_several_errors_in_one_line(cfg_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, ["optim.lr=0", "train.epochs=0"])
    assert "optim.lr: must be > 0" in str(info.value)
    assert "train.epochs: must be >= 1" in str(info.value)


def test_missing_data_path_and_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: small_cnn\n")
    with pytest.raises(ConfigError, match="data: required"):
        load_config(p)
    p.write_text("data:\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: invalid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_env_expansion_and_default_data_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGEGENDER_DATA", str(tmp_path))
    assert expand_path("${AGEGENDER_DATA}/utkface") == str(tmp_path / "utkface")
    monkeypatch.delenv("AGEGENDER_DATA")
    assert REPO.parent / "shared" / "data" == agegender.config.DEFAULT_DATA_ROOT
    monkeypatch.setattr(agegender.config.paths, "DEFAULT_DATA_ROOT", tmp_path)
    assert expand_path("$AGEGENDER_DATA/x") == str(tmp_path / "x")
    # not set (or empty) and no default folder: one line saying how to set it
    monkeypatch.setattr(agegender.config.paths, "DEFAULT_DATA_ROOT", tmp_path / "nowhere")
    for value in (None, ""):
        if value is not None:
            monkeypatch.setenv("AGEGENDER_DATA", value)
        with pytest.raises(DataRootError, match=r"set AGEGENDER_DATA=/path/to/data"):
            expand_path("${AGEGENDER_DATA}/utkface")
    with pytest.raises(ConfigError, match=r"^data\.path: \$\{AGEGENDER_DATA\} is not set and "):
        validate_config({"data": {"path": "${AGEGENDER_DATA}/utkface"}})
    monkeypatch.delenv("AGEGENDER_DATA")
    with pytest.raises(ValueError, match="NOT_SET_VAR_XYZ is not set"):
        expand_path("${NOT_SET_VAR_XYZ}/x")
    c = validate_config({"data": {"path": "rel"}}, base_dir=tmp_path)
    assert c.data.path == str(tmp_path / "rel")


def test_augment_shorthands() -> None:
    c = validate_config(
        {
            "data": {"path": "/x"},
            "augment": {
                "recipe": [
                    "hflip",
                    {"rotation": 20},
                    {"color_jitter": 0.3},
                    {"op": "grayscale", "p": 0.2},
                    {"resized_crop": {"scale": [0.5, 1.0]}},
                ]
            },
        }
    )
    ops = {op.op: op for op in c.augment.recipe}
    assert ops["rotation"].degrees == 20
    assert ops["color_jitter"].saturation == 0.3 and ops["color_jitter"].brightness == 0.3
    assert ops["grayscale"].p == 0.2
    assert ops["resized_crop"].scale == (0.5, 1.0)


@pytest.mark.parametrize(
    "path",
    CONFIGS + STUDY_CONFIGS,
    ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS + STUDY_CONFIGS],
)
def test_every_shipped_config_validates(path: Path) -> None:
    c = load_config(path)
    size, input_size = resolve_sizes(c)  # model min input size respected
    assert size >= input_size >= 32
    assert "${" not in c.data.path and Path(c.data.path).is_absolute()
    assert c.name == path.stem
    assert c.logger.csv and c.logger.tensorboard and not c.logger.mlflow and not c.logger.wandb


def test_expected_experiment_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    expected = {
        "default",
        "levi_hassner_adience",
        "levi_hassner_reduced",
        "resnet50_lh_head_frozen",
        "resnet18_utkface",
        "resnet50_transfer_finetune",
        "mobilenetv2_utkface",
        "vgg16_mlp_1024_512_256",
        "vgg19_conv5_head",
        "efficientnetv2_utkface",
        "xception_utkface",
        "inceptionv3_utkface",
        "small_cnn_multitask",
        "dex_age_distribution",
        "age_regression_l1",
        "celeba_pretrain",
        "adience_finetune_from_celeba",
        "split_4_3_3",
    }
    assert expected <= names, sorted(expected - names)
    ft = load_config(REPO / "configs" / "adience_finetune_from_celeba.yaml")
    assert ft.model.init_from == str(
        REPO / "runs" / "celeba_pretrain" / "checkpoints" / "best.ckpt"
    )
