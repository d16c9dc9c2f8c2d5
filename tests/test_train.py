"""The training engine: a real learning run, checkpoints, resume, DDP.

Runs use real UTKFace faces at 32 px with ``trainer.threads=1`` (on a busy 2-core machine
one thread is several times faster than two fighting for the cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

from agegender.config import ConfigError, load_config

FAST = ["trainer.threads=1", "train.progress_bar=false", "logger.tensorboard=false"]


def write_config(tmp: Path, data_path: Path, body: str = "") -> Path:
    cfg = tmp / "run.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            data: {{path: {data_path}, size: 32, input_size: 32, limit: 300, seed: 0}}
            model: {{name: small_cnn}}
            task: {{gender: true, age: groups, gamma: 0.8}}
            optim: {{name: adam, lr: 0.003}}
            schedule: {{name: cosine, warmup_epochs: 0}}
            train:
              epochs: 2
              batch_size: 32
              early_stopping: {{patience: null}}
            augment: {{recipe: [hflip]}}
            """
        )
        + body,
        encoding="utf-8",
    )
    return cfg


# --------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def gender_run(utkface_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from agegender.train import train

    tmp = tmp_path_factory.mktemp("learn")
    cfg = write_config(tmp, utkface_dir)
    overrides = [*FAST, "data.limit=1200", "train.epochs=8", "train.batch_size=64"]
    return train(cfg, tmp / "run", overrides=overrides, printer=lambda s: None)


def test_learns_gender_well_beyond_the_majority_baseline(gender_run) -> None:
    s = gender_run.summary
    majority = s["dataset"]["baselines"]["val/gender_acc"]
    best = s["best"]
    assert 0.45 < majority < 0.6
    # seeds 0, 1, 2 reach 0.80, 0.88, 0.79 in ~8 s of training; chance is ~0.52
    assert best["val/gender_acc"] >= 0.70, best
    assert best["val/gender_acc"] >= majority + 0.15
    rows = gender_run.metrics
    assert rows["train/loss"].iloc[-1] < rows["train/loss"].iloc[0]  # it trained


def test_run_dir_and_summary(gender_run) -> None:
    out, s = gender_run.out_dir, gender_run.summary
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == s
    assert s["epochs_run"] == 8 and s["max_epochs"] == 8 and not s["resumed"]
    assert s["model"] == "small_cnn" and s["size"] == 32 and s["input_size"] == 32
    assert s["params"] > 50_000 and s["trainable_params"] == s["params"]
    assert 0.1 < s["model_size_mb"] < 5
    assert s["train_images_per_sec"] > 10 and s["train_time_s"] > 0
    d = s["dataset"]
    assert d["used"] == 1200 and sum(d["splits"].values()) == 1200 and d["read"] > 20_000
    assert s["best"]["epoch"] in range(8) and "val/loss" in s["best"]
    assert s["checkpoints"]["best"] == str(out / "checkpoints" / "best.ckpt")
    rows = pd.read_csv(out / "metrics.csv")
    assert rows["epoch"].tolist() == list(range(8))  # one row per epoch
    for col in (
        "train/loss",
        "val/loss",
        "val/gender_acc",
        "val/age_acc",
        "val/age_acc_1off",
        "train/gender_acc",
        "train/lr",
        "train/images_per_sec",
    ):
        assert rows[col].notna().all(), col
    assert "val/age_mae" not in rows  # groups only: no MAE
    resolved = load_config(out / "config.yaml")
    assert resolved.data.limit == 1200 and resolved.train.epochs == 8


def test_load_model_rebuilds_and_reproduces_val_metrics(gender_run) -> None:
    from agegender.artifact import load_model
    from agegender.data.augment import Preprocess
    from agegender.train.data import prepare_data
    from agegender.train.module import FaceModule

    best = gender_run.best_checkpoint
    model, meta = load_model(best)
    assert not model.training and meta["arch"] == "small_cnn"
    pre = meta["preprocessing"]
    assert pre["input_size"] == 32 and pre["resize"] == 32 and len(pre["mean"]) == 3
    assert meta["labels"]["gender"] == ["male", "female"] and len(meta["labels"]["age_groups"]) == 8
    assert meta["config"]["model"]["name"] == "small_cnn" and meta["code_version"]

    # same outputs as Lightning's own restore of the checkpoint
    lit = FaceModule.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), lit.model(x)
    # (the training copy is channels_last: same maths, float rounding may differ slightly)
    for key in ("gender", "age"):
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key

    # and, fed the validation faces with only meta's preprocessing, the logged accuracy
    cfg = load_config(gender_run.out_dir / "config.yaml")
    data = prepare_data(cfg)
    val = data.splits.val
    imgs = torch.from_numpy(np.asarray(data.images[data.cache_rows[val]])).permute(0, 3, 1, 2)
    p = Preprocess(
        size=pre["resize"], input_size=pre["input_size"], mean=pre["mean"], std=pre["std"]
    )
    with torch.no_grad():
        pred = model(p.eval(imgs))["gender"].argmax(1).numpy()
    truth = data.table["gender"].iloc[val].to_numpy(dtype=int)
    acc = float((pred == truth).mean())
    # at most one borderline face may flip between the channels_last and NCHW copies
    logged = gender_run.summary["best"]["val/gender_acc"]
    assert acc == pytest.approx(logged, abs=1.01 / len(val))


def test_init_from_an_earlier_run_transfers_matching_weights(gender_run, tmp_path: Path) -> None:
    """CelebA -> Adience style: start a DEX-age model from the gender+groups run."""
    from agegender.train import train

    class FirstWeights(Callback):
        def on_train_start(self, trainer, module) -> None:
            self.state = {k: v.clone() for k, v in module.model.state_dict().items()}

    src = torch.load(gender_run.best_checkpoint, weights_only=True)["state_dict"]
    cfg = load_config(gender_run.out_dir / "config.yaml")
    first = FirstWeights()
    ov = [
        *FAST,
        f"model.init_from={gender_run.best_checkpoint}",
        "task.age=dex",
        "train.epochs=1",
        "data.limit=200",
        "train.early_stopping.monitor=val/age_mae",
    ]
    from agegender.config import apply_overrides, validate_config

    raw = apply_overrides(cfg.model_dump(mode="json"), ov)
    res = train(validate_config(raw), tmp_path / "run", callbacks=[first], printer=lambda s: None)
    report = res.summary["init_report"]
    fresh = [k for k, v in first.state.items() if v.shape != src[f"model.{k}"].shape]
    assert report["mismatched"] == len(fresh) == 2  # the DEX output layer (101 ages)
    assert all(k.startswith("heads.age") for k in fresh)
    for key, value in first.state.items():
        if key not in fresh:
            assert torch.equal(value, src[f"model.{key}"]), key  # everything else transferred
    assert "val/age_mae" in res.metrics


# --------------------------------------------------------------------------- resume
class CrashAfter(Callback):
    """Dies as the batch after optimiser step ``steps`` starts (that step's checkpoint, which
    runs after the other callbacks' ``on_train_batch_end``, is written)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step >= self.steps:
            raise RuntimeError("simulated crash")


def test_resume_continues_epochs_via_cli(utkface_dir: Path, tmp_path: Path) -> None:
    from agegender.cli import app
    from agegender.train import train

    cfg = write_config(tmp_path, utkface_dir)
    out = tmp_path / "run"
    first = train(cfg, out, overrides=FAST, printer=lambda s: None)
    assert first.summary["epochs_run"] == 2
    steps = pd.read_csv(out / "metrics.csv")["step"].tolist()

    runner = CliRunner()
    again = runner.invoke(
        app, ["train", str(cfg), "--out", str(out), *sum((["--set", o] for o in FAST), [])]
    )
    assert again.exit_code == 2 and "already holds a run" in again.output

    res = runner.invoke(
        app,
        [
            "train",
            str(cfg),
            "--out",
            str(out),
            "--resume",
            "--set",
            "train.epochs=3",
            *sum((["--set", o] for o in FAST), []),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "metrics.csv")
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header.count("epoch") == 1 and header[:2] == ["epoch", "step"]
    assert rows["epoch"].tolist() == [0, 1, 2]
    assert rows["step"].tolist()[:2] == steps and rows["step"].iloc[2] > steps[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["resumed"]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == rows["step"].iloc[2] + 1


def test_crash_mid_epoch_then_resume_completes(utkface_dir: Path, tmp_path: Path) -> None:
    from agegender.train import train

    cfg = write_config(tmp_path, utkface_dir)
    out = tmp_path / "run"
    ov = [*FAST, "train.epochs=3", "train.checkpoint_every_n_steps=2"]
    ov += ["data.split=[0.8,0.1,0.1]"]  # a test split: trainer.test restores best.ckpt
    per_epoch = 240 // 32  # 300 faces, 80% train, batch 32, drop_last

    class Seen(Callback):  # which faces epoch 1 trains on
        def __init__(self) -> None:
            self.rows: list[int] = []

        def on_train_batch_start(self, trainer, module, batch, idx) -> None:
            if trainer.current_epoch == 1:
                self.rows += batch["row"].tolist()

    before, after = Seen(), Seen()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, out, overrides=ov, callbacks=[CrashAfter(per_epoch + 3), before], printer=print)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == per_epoch + 3  # saved every 2 steps, mid epoch 1
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [0]

    before_resume = ckpt_seconds(out)
    done = train(cfg, out, resume=True, overrides=ov, callbacks=[after], printer=lambda s: None)
    rows = pd.read_csv(out / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1, 2] and done.summary["epochs_run"] == 3
    assert rows["train/loss"].notna().all() and rows["val/loss"].notna().all()
    assert not any(c.startswith("test/") for c in rows.columns)  # in summary.json["test"]
    assert rows["step"].iloc[-1] + 1 == 3 * per_epoch  # no step lost or repeated
    # the resumed epoch continues with the batches it had not trained on: no repeats
    assert len(before.rows) == 3 * 32 and len(after.rows) == (per_epoch - 3) * 32
    assert not set(before.rows) & set(after.rows)
    assert len(set(before.rows) | set(after.rows)) == per_epoch * 32
    # the time trained before the crash counts; the resumed epoch's rate is a real rate
    s = done.summary
    assert before_resume > 0.05 and s["test"]
    assert s["train_time_total_s"] == pytest.approx(before_resume + s["train_time_s"], abs=0.5)
    rates = s["images_per_sec_by_epoch"]
    assert len(rates) == 3 and min(rates) > 0.1 * max(rates), rates


EPOCH_COLUMNS = ("train/loss", "train/gender_acc", "train/lr", "train/images_per_sec", "val/loss")


def test_a_kill_right_after_the_epoch_end_checkpoint_loses_no_metrics(
    utkface_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files as a kill leaves them just after epoch 1's last.ckpt (which a resume skips
    epoch 1 for) hold epoch 1's train and val metrics; the resumed run adds epoch 2 only,
    and the test split's metrics go to summary.json, never to metrics.csv."""
    import shutil

    from agegender.train import train
    from agegender.train.callbacks import LastCheckpoint

    cfg = write_config(tmp_path, utkface_dir)
    out, at_kill = tmp_path / "run", tmp_path / "at_kill"
    ov = [*FAST, "train.epochs=3", "data.limit=160", "data.split=[0.7,0.15,0.15]"]
    epoch_end = LastCheckpoint.on_train_epoch_end

    def save_then_die(self, trainer, module) -> None:
        epoch_end(self, trainer, module)
        if trainer.current_epoch == 1:
            shutil.copytree(out, at_kill)  # the disk as a kill here would leave it
            raise RuntimeError("killed")

    monkeypatch.setattr(LastCheckpoint, "on_train_epoch_end", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, out, overrides=ov, printer=lambda s: None)
    monkeypatch.undo()
    shutil.rmtree(out)
    shutil.copytree(at_kill, out)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    killed = pd.read_csv(out / "metrics.csv")
    assert killed["epoch"].tolist() == [0, 1]
    for col in EPOCH_COLUMNS:
        assert killed[col].notna().all(), col

    done = train(cfg, out, resume=True, overrides=ov, printer=lambda s: None)
    rows = pd.read_csv(out / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1, 2]  # one row per epoch: none lost or repeated
    for col in EPOCH_COLUMNS:
        assert rows[col].notna().all(), col
    assert rows.loc[1, "train/loss"] == pytest.approx(killed.loc[1, "train/loss"])
    assert not any(c.startswith("test/") for c in rows.columns)
    s = done.summary
    assert s["epochs_run"] == 3 and s["last"]["epoch"] == 2 and s["test"]["test/loss"] > 0


def test_epoch_rows_are_dropped_for_epochs_trained_again(tmp_path: Path) -> None:
    """A row written before a kill that came before its checkpoint is trained again on
    resume: its old row goes; an old file's test-only row is not read as an epoch."""
    from agegender.fileio import read_epoch_metrics
    from agegender.train.callbacks import EpochCSVLogger

    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,test/loss,train/loss,val/loss\n"
        "0,9,,1.5,1.4\n1,19,,1.2,1.3\n2,29,,1.1,1.2\n3,29,1.25,,\n"
    )
    assert read_epoch_metrics(path)["epoch"].tolist() == [0, 1, 2]
    logger = EpochCSVLogger(path)
    assert sorted(logger.rows) == [0, 1, 2]  # the test-only row is gone
    logger.forget_from(1)
    logger.log_metrics({"epoch": 1, "val/loss": 1.0}, step=19)
    logger.log_metrics({"epoch": 1, "train/loss": 0.9, "test/loss": 2.0}, step=19)
    rows = pd.read_csv(path)
    assert rows["epoch"].tolist() == [0, 1] and list(rows.columns) == [
        "epoch",
        "step",
        "train/loss",
        "val/loss",
    ]
    assert rows.loc[1, "train/loss"] == 0.9 and rows.loc[1, "val/loss"] == 1.0


def test_no_step_checkpoint_on_an_epochs_last_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume from a step checkpoint of the last batch would skip the epoch's validation
    and row: the epoch-end save (row first) comes a moment later instead."""
    from types import SimpleNamespace

    from agegender.train.callbacks import LastCheckpoint

    saved: list[int] = []
    monkeypatch.setattr(LastCheckpoint, "_save", lambda self, trainer: saved.append(trainer.k))
    cb = LastCheckpoint("unused.ckpt", every_n_steps=2)
    for k, idx in enumerate((1, 3)):  # global step 4, batch 2 of 4, then 4 of 4
        progress = SimpleNamespace(is_last_batch=idx == 3)
        trainer = SimpleNamespace(
            k=k,
            global_step=4,
            num_training_batches=4,
            fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        )
        cb.on_train_batch_end(trainer, None, None, None, idx)
    assert saved == [0]


def ckpt_seconds(out: Path) -> float:
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("Throughput")]
    return state["train_seconds"]


def test_same_seed_same_run(utkface_dir: Path, tmp_path: Path) -> None:
    from agegender.train import train

    cfg = write_config(tmp_path, utkface_dir)
    ov = [*FAST, "train.epochs=1", "data.limit=200"]
    a = train(cfg, tmp_path / "a", overrides=ov, printer=lambda s: None).metrics
    b = train(cfg, tmp_path / "b", overrides=ov, printer=lambda s: None).metrics
    cols = [c for c in a.columns if "images_per_sec" not in c]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_freeze_then_unfreeze_backbone(utkface_dir: Path, tmp_path: Path) -> None:
    from agegender.train import train

    class Watch(Callback):
        def __init__(self) -> None:
            self.snaps: list[torch.Tensor] = []
            self.groups: list[list[float]] = []

        def _snap(self, trainer, module) -> None:
            w = torch.cat([p.detach().flatten() for p in module.model.backbone.parameters()])
            self.snaps.append(w.clone())
            self.groups.append([g["lr"] for g in trainer.optimizers[0].param_groups])

        def on_train_start(self, trainer, module) -> None:
            self._snap(trainer, module)

        def on_train_epoch_end(self, trainer, module) -> None:
            self._snap(trainer, module)

    cfg = write_config(tmp_path, utkface_dir)
    watch = Watch()
    ov = [
        *FAST,
        "model.freeze_backbone=true",
        "model.unfreeze_at_epoch=1",
        "model.backbone_lr_factor=0.1",
        "schedule.name=none",
        "data.limit=200",
    ]
    train(cfg, tmp_path / "run", overrides=ov, callbacks=[watch], printer=lambda s: None)
    start, after0, after1 = watch.snaps
    assert torch.equal(start, after0)  # frozen in epoch 0 (BatchNorm included)
    assert not torch.equal(after0, after1)  # trained in epoch 1
    assert len(watch.groups[1]) == 1 and watch.groups[2] == pytest.approx([0.003, 0.0003])


def test_unfrozen_blocks_ramp_up_from_zero(utkface_dir: Path, tmp_path: Path) -> None:
    """model.unfreeze_warmup_epochs: the unfrozen group's rate rises linearly from 0 over
    that many epochs (per optimiser step) while the head's follows its schedule."""
    from agegender.train import train

    class Rates(Callback):
        def __init__(self) -> None:
            self.steps: list[tuple[int, list[float]]] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            groups = trainer.optimizers[0].param_groups
            self.steps.append((trainer.current_epoch, [g["lr"] for g in groups]))

    rates = Rates()
    ov = [
        *FAST,
        "model.freeze_backbone=true",
        "model.unfreeze_at_epoch=1",
        "model.backbone_lr_factor=0.1",
        "model.unfreeze_warmup_epochs=0.5",
        "schedule.name=none",
        "data.limit=200",
        "train.epochs=2",
    ]
    train(write_config(tmp_path, utkface_dir), tmp_path / "run", overrides=ov, callbacks=[rates])
    epoch1 = [lrs for epoch, lrs in rates.steps if epoch == 1]
    n = sum(epoch == 0 for epoch, _ in rates.steps)
    assert len(epoch1) == n >= 4
    ramp = max(1, round(0.5 * n))
    assert [lrs[0] for lrs in epoch1] == pytest.approx([0.003] * n)  # the head: unchanged
    want = [0.0003 * min(1.0, (k + 1) / ramp) for k in range(n)]
    assert [lrs[1] for lrs in epoch1] == pytest.approx(want)
    with pytest.raises(ConfigError, match="model.unfreeze_warmup_epochs: needs model.unfreeze_at"):
        load_config(write_config(tmp_path, utkface_dir), ["model.unfreeze_warmup_epochs=1"])


def test_task_needs_labels_the_dataset_has(tmp_path: Path) -> None:
    from PIL import Image

    from agegender.train import train

    for sex in ("male", "female"):
        (tmp_path / "faces" / sex).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 40, 90, 30)).save(tmp_path / "faces" / sex / f"{i}.png")
    cfg = write_config(tmp_path, tmp_path / "faces")
    with pytest.raises(ConfigError, match=r"^task\.age: dataset has no age labels"):
        train(cfg, tmp_path / "run", overrides=FAST)
    with pytest.raises(ConfigError, match=r"data\.path: no such file"):
        train(cfg, tmp_path / "run", overrides=[*FAST, "data.path=/nonexistent/faces"])


# --------------------------------------------------------------------------- DDP
DDP_SCRIPT = """
import hashlib, json, os, sys
from lightning.pytorch.callbacks import Callback
from agegender.train import train

class Dump(Callback):
    def on_train_end(self, trainer, module):
        h = hashlib.sha256()
        for k, v in sorted(module.model.state_dict().items()):
            h.update(k.encode()); h.update(v.detach().cpu().numpy().tobytes())
        info = {"rank": trainer.global_rank, "world": trainer.world_size, "sha": h.hexdigest(),
                "step": trainer.global_step,
                "val_loss": float(trainer.callback_metrics["val/loss"]),
                "val_acc": float(trainer.callback_metrics["val/gender_acc"])}
        with open(os.path.join(sys.argv[1], f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(info, f)

train(sys.argv[2], os.path.join(sys.argv[1], "run"), overrides=sys.argv[3:], callbacks=[Dump()])
"""


def test_ddp_two_cpu_processes_agree(utkface_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    cfg = write_config(tmp_path, utkface_dir)
    ov = [
        *FAST,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.limit=200",
    ]
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(cfg), *ov],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["sha"] == r1["sha"]  # identical weights after training
    assert r0["val_loss"] == r1["val_loss"] and r0["val_acc"] == r1["val_acc"]
    # 160 training faces, 2 ranks x batch 32: 2 full batches per rank per epoch
    assert r0["step"] == r1["step"] == 2 * 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2


def test_keep_epoch_checkpoints_saves_every_epoch(tiny_config: Path, tmp_path: Path) -> None:
    """train.keep_epoch_checkpoints: checkpoints/epoch_N.ckpt for every epoch (the start and
    the end of `export --interpolate`); the last one holds the weights last.ckpt holds."""
    from agegender.artifact import load_model
    from agegender.train import train

    run = train(
        tiny_config,
        tmp_path / "run",
        overrides=[*FAST, "train.epochs=2", "train.keep_epoch_checkpoints=true"],
        printer=lambda s: None,
    )
    ckpts = run.out_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("epoch_*.ckpt")) == ["epoch_0.ckpt", "epoch_1.ckpt"]
    first, second = (load_model(ckpts / f"epoch_{i}.ckpt")[0].state_dict() for i in (0, 1))
    last = load_model(run.last_checkpoint)[0].state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(second[k], last[k]) for k in last)
    # off by default
    plain = train(tiny_config, tmp_path / "plain", overrides=[*FAST, "train.epochs=1"])
    assert not list((plain.out_dir / "checkpoints").glob("epoch_*.ckpt"))


def test_dex_loss_label_distributions() -> None:
    """DEX's one-hot cross-entropy, its Gaussian label distribution (task.age_sigma) and the
    expected age's L1 term (task.age_l1); faces without an age add nothing."""
    from agegender.train.module import dex_loss, masked_ce

    torch.manual_seed(0)
    logits = torch.randn(4, 101)
    age = torch.tensor([3.0, 40.0, float("nan"), 100.0])
    hard = dex_loss(logits, age)
    keep = [0, 1, 3]
    assert torch.isclose(hard, masked_ce(logits[keep], age[keep].long()))
    # a very narrow Gaussian is the one-hot target
    assert torch.isclose(dex_loss(logits, age, sigma=0.05), hard, atol=1e-4)
    # the soft target's cross-entropy is smallest at the softmax equal to that target
    years = torch.arange(101.0)
    target = torch.softmax(-((years - 40.0) ** 2) / (2 * 2.0**2), -1)
    best = dex_loss(target.clamp_min(1e-30).log()[None], torch.tensor([40.0]), sigma=2.0)
    entropy = -torch.special.xlogy(target, target).sum()
    assert torch.isclose(best, entropy, atol=1e-4)
    assert dex_loss(logits[1:2], age[1:2], sigma=2.0) > best
    # the L1 term adds the weight times the expected age's error, NaN ages ignored
    expected = (logits.softmax(-1) * years).sum(-1)
    l1 = (expected[keep] - age[keep]).abs().mean()
    assert torch.isclose(dex_loss(logits, age, l1=0.5), hard + 0.5 * l1, atol=1e-4)
    # every face without an age: zero, graph kept
    none = torch.full((2,), float("nan"))
    out = dex_loss(logits[:2].requires_grad_(), none, sigma=2.0, l1=1.0)
    assert out.item() == 0.0 and out.requires_grad
