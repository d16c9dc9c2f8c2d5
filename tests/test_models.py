"""The model zoo: every registered model builds, runs forward/backward and has the promised
outputs (shaped like timm's tests/test_models.py), plus the registry, heads and weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

from agegender.artifact import parse_meta, probability_module
from agegender.infer.onnx import OnnxModel, export_onnx_bytes
from agegender.models import (
    FaceModel,
    TaskSpec,
    create_model,
    dex_expected_age,
    list_models,
    model_info,
    register_model,
)
from agegender.models import registry as registry_module
from agegender.models.heads import GridPool

REQUIRED = {
    "levi_hassner",
    "levi_hassner_reduced",
    "resnet50_lh_head",
    "resnet18",
    "resnet50",
    "mobilenetv2_100",
    "vgg16",
    "vgg19",
    "efficientnetv2_rw_s",
    "tf_efficientnetv2_s",
    "legacy_xception",
    "inception_v3",
    "small_cnn",
    "small_resnet",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny batches gain nothing from more, and on a busy
    2-core machine OpenMP spinning made the file several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _size(name: str) -> int:
    """The smallest sensible test size: 64 px, or the model's minimum when larger."""
    return max(64, model_info(name)["min_input_size"])


def test_registry_lists_required_models() -> None:
    names = list_models()
    assert names == sorted(names)
    assert set(names) >= REQUIRED


#: The task specs every model is built, run and exported with (id -> TaskSpec).
TASKS = {
    "groups": TaskSpec(gender=True, age="groups"),
    "dex": TaskSpec(gender=True, age="dex"),
    "regression": TaskSpec(gender=True, age="regression"),
    "gender_only": TaskSpec(gender=True, age="none"),
    "age_only": TaskSpec(gender=False, age="regression"),
}
AGE_SHAPES = {"groups": (8,), "dex": (101,), "regression": ()}
ONNX_NAMES = {"groups": "age_group_probs", "dex": "age_probs", "regression": "age_years"}

#: Like timm's EXCLUDE_FILTERS, by measured cost only: these models' ONNX export plus
#: ONNX Runtime load and one run take over 0.5 s at the test size (seconds below: the best
#: of two, export_onnx_bytes + OnnxModel + one batch of 3, one thread, on the 2-core box
#: under a load of ~4; forward+backward is 0.01-0.3 s for every model). They are exported in
#: the default task spec ("groups") only: a task spec changes just the last layers and the
#: probability wrapper, which small_cnn, small_resnet (small_cnn family), resnet18 (timm)
#: and levi_hassner_reduced (levi_hassner) export in every spec (0.09-0.47 s). Every model
#: runs forward/backward in every spec. The slowest test, tf_efficientnetv2_s-groups (6-9 s,
#: its export alone ~4 s at 32 or 64 px alike) stays: no other model has its TF "same"
#: padding.
EXPORT_DEFAULT_ONLY = {
    "efficientnet_lite0": 0.75,
    "efficientnet_lite1": 0.95,
    "efficientnet_lite2": 1.10,
    "efficientnetv2_rw_s": 2.89,
    "inception_v3": 1.54,
    "legacy_xception": 1.65,
    "levi_hassner": 0.83,
    "mobilenetv2_100": 0.53,
    "resnet50": 1.42,
    "resnet50_lh_head": 2.54,
    "tf_efficientnetv2_s": 3.27,
    "vgg16": 0.96,
    "vgg19": 1.63,
}


def _batch_stats_as_running_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running stats to the (biased) statistics of the batch ``x``.

    A freshly initialised deep net in eval mode (unit running variance) blows up or
    collapses (inception_v3's logits ~1e6, legacy_xception's the same for every input), so
    saturated probabilities would agree between runtimes whatever the graph. With the stats
    of a batch of random images that holds the test images, probabilities stay near 0.5
    and move with the input. (The test images alone, 3 of them, leave some channels near
    constant at 1x1 maps; 16 others alone leave channels the test images fall far outside
    of. Either way 1/sqrt(var + eps) turns float rounding into 1e-3 differences:
    efficientnetv2_rw_s, inception_v3.)
    """

    def take_stats(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        dims = [0, *range(2, args[0].dim())]
        bn.running_mean.copy_(args[0].mean(dims))
        bn.running_var.copy_(args[0].var(dims, unbiased=False))

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks = [bn.register_forward_pre_hook(take_stats) for bn in bns]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.filterwarnings("ignore")  # tracer / constant-folding chatter
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("name", list_models())
def test_model(name: str, task: str) -> None:
    """Every registered model in every task spec: the promised outputs, gradients to the
    first layer, and the project's ONNX export giving PyTorch's probabilities."""
    torch.manual_seed(0)
    tasks = TASKS[task]
    model = create_model(name, tasks)
    assert isinstance(model, FaceModel)
    assert model.name == name and model.tasks == tasks
    cfg = model.default_cfg
    assert {"input_size", "resize", "mean", "std", "description"} <= set(cfg)
    assert cfg["resize"] >= cfg["input_size"] and len(cfg["mean"]) == len(cfg["std"]) == 3
    if tasks == TaskSpec():
        assert model_info(name)["params"] == sum(p.numel() for p in model.parameters())
    blocks = model.backbone_blocks()
    backbone_params = {id(p) for p in model.backbone.parameters()}
    assert blocks and all(id(p) in backbone_params for b in blocks for p in b.parameters())

    # forward (train mode): one output per task, of the promised shape
    model.train()
    size = _size(name)
    out = model(torch.randn(2, 3, size, size))
    expected = {"gender": (2, 2)} if tasks.gender else {}
    if tasks.age != "none":
        expected["age"] = (2, *AGE_SHAPES[tasks.age])
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())
    if tasks.age == "regression":  # the regression head starts near the prior (~33 years)
        assert ((out["age"] - 33).abs() < 10).all()

    # backward: every trainable parameter gets a gradient, down to the very first conv
    loss = sum(v.logsumexp(1) if v.dim() == 2 else v for v in out.values())
    loss.mean().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable[0].grad is not None and trainable[0].grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient (breaks DDP): {unused[:5]}"
    first = next(model.backbone.parameters())
    if first.requires_grad:
        assert first.grad is not None and first.grad.abs().sum() > 0
    else:  # a frozen backbone (resnet50_lh_head)
        assert first.grad is None

    # the project's exporter, run by ONNX Runtime: PyTorch's probabilities
    if name in EXPORT_DEFAULT_ONLY and tasks != TaskSpec():
        return
    pytest.importorskip("onnxruntime")
    meta = {
        "name": f"test-{name}-{task}",
        "arch": name,
        "tasks": {"gender": tasks.gender, "age": tasks.age},
        "preprocessing": {
            "input_size": size,
            "resize": size,
            "mean": cfg["mean"],
            "std": cfg["std"],
        },
    }
    spec = parse_meta(meta)
    x = torch.randn(3, 3, size, size)  # the exporter traces batch 2: the batch axis is dynamic
    _batch_stats_as_running_stats(model, torch.cat([torch.randn(16, 3, size, size), x]))
    with torch.no_grad():
        want = dict(zip(spec.output_names, probability_module(model, spec)(x), strict=True))
    names = ["gender_probs"] if tasks.gender else []
    names += [ONNX_NAMES[tasks.age]] if tasks.age != "none" else []
    assert list(want) == names
    onnx_model = OnnxModel(export_onnx_bytes(model, meta), intra_op_threads=1)
    assert onnx_model.output_names == names and onnx_model.spec == spec
    got = onnx_model(x.numpy())
    for key, value in want.items():
        tol = 1e-3 if key == "age_years" else 1e-4  # years, not probabilities
        torch.testing.assert_close(torch.from_numpy(got[key]), value, rtol=0, atol=tol)
        if key != "age_years":
            torch.testing.assert_close(value.sum(1), torch.ones(3))


def test_taskspec_validation() -> None:
    with pytest.raises(ValueError, match="years"):
        TaskSpec(age="years")
    with pytest.raises(ValueError, match="at least one task"):
        TaskSpec(gender=False, age="none")
    spec = TaskSpec()
    spec.age = "bins"
    with pytest.raises(ValueError, match="bins"):
        create_model("small_cnn", spec)
    assert TaskSpec(age="dex").outputs() == {"gender": (2,), "age": (101,)}


def test_unknown_model_names_it_and_suggests() -> None:
    with pytest.raises(ValueError, match="resnet19") as err:
        create_model("resnet19")
    assert "resnet18" in str(err.value)
    with pytest.raises(ValueError, match="levi_hasner"):
        model_info("levi_hasner")


def test_options_pass_through_and_unknown_options_fail() -> None:
    model = create_model("resnet18", head_hidden=[1024, 512, 256], dropout=[0.5, 0.3, 0.2])
    linears = [m for m in model.neck.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [1024, 512, 256]
    drops = [m.p for m in model.neck.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.5, 0.3, 0.2]
    with pytest.raises(TypeError, match="'dropuot'"):
        create_model("small_cnn", dropuot=0.1)
    with pytest.raises(ValueError, match="head"):
        create_model("resnet18", head="transformer")
    with pytest.raises(ValueError, match="dropout"):
        create_model("resnet18", head_hidden=[512, 512], dropout=[0.5])


def test_conv5_head() -> None:
    model = create_model("mobilenetv2_100", head="conv5").train()
    convs = [m.out_channels for m in model.neck.modules() if isinstance(m, nn.Conv2d)]
    dense = [m.out_features for m in model.neck.modules() if isinstance(m, nn.Linear)]
    assert convs == [512, 128, 384, 384, 500] and dense == [2048, 2048]
    out = model(torch.randn(2, 3, 64, 64))
    assert out["gender"].shape == (2, 2) and out["age"].shape == (2, 8)


def test_input_size_override() -> None:
    model = create_model("levi_hassner", input_size=112)
    assert model.default_cfg["input_size"] == 112 and model.default_cfg["resize"] == 126
    assert create_model("small_resnet").default_cfg["input_size"] == 64
    with pytest.raises(ValueError, match="input_size"):
        create_model("levi_hassner", input_size=32)


def test_pretrained_file_roundtrip_own_model(tmp_path) -> None:
    torch.manual_seed(1)
    src = create_model("small_resnet").eval()
    with torch.no_grad():  # non-default BN statistics so the copy is a real test
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / "small_resnet.pt"
    torch.save(src.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)
    loaded = create_model("small_resnet", pretrained_file=path).eval()
    assert loaded.load_report == {"missing": [], "unexpected": [], "mismatched": []}
    with torch.no_grad():
        for key, value in src(x).items():
            torch.testing.assert_close(loaded(x)[key], value)

    # a Lightning-style checkpoint ("state_dict" with a "model." prefix) loads too
    ckpt = tmp_path / "run.ckpt"
    lightning_state = {f"model.{k}": v for k, v in src.state_dict().items()}
    lightning_state["loss_weights"] = torch.ones(2)  # other module state next to the model
    torch.save({"state_dict": lightning_state}, ckpt)
    again = create_model("small_resnet", pretrained_file=ckpt).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)["gender"], src(x)["gender"])

    # other heads: the backbone loads, the age head is reported as a shape mismatch
    dex = create_model("small_resnet", TaskSpec(age="dex"), pretrained_file=path)
    assert dex.load_report["mismatched"] == ["heads.age.weight", "heads.age.bias"]
    torch.testing.assert_close(dex.backbone.state_dict(), src.backbone.state_dict())

    with pytest.raises(ValueError, match="no weights"):
        create_model("small_cnn", pretrained_file=path)
    with pytest.raises(FileNotFoundError):
        create_model("small_cnn", pretrained_file=tmp_path / "missing.pt")


def test_pretrained_file_through_timm(tmp_path) -> None:
    torch.manual_seed(2)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", pretrained_file=path)
    got, want = model.backbone.state_dict(), reference.state_dict()
    for key, value in got.items():
        torch.testing.assert_close(value, want[key])
    assert model.load_report["missing"] == []
    assert set(model.load_report["unexpected"]) == {"fc.weight", "fc.bias"}

    # a backbone state dict saved from one of our models round-trips the same way
    backbone_file = tmp_path / "backbone.pth"
    torch.save(model.backbone.state_dict(), backbone_file)
    again = create_model("resnet18", pretrained_file=backbone_file)
    torch.testing.assert_close(again.backbone.state_dict(), got)

    # a whole FaceModel state dict loads into the whole model (heads included)
    face_file = tmp_path / "face.pth"
    torch.save(model.state_dict(), face_file)
    whole = create_model("resnet18", pretrained_file=face_file).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(whole(x)["age"], model.eval()(x)["age"])

    wrong = tmp_path / "wrong.pth"
    torch.save(create_model("small_cnn").backbone.state_dict(), wrong)
    with pytest.raises(ValueError, match="no weights"):
        create_model("resnet18", pretrained_file=wrong)


def test_resnet50_lh_head_is_frozen() -> None:
    model = create_model("resnet50_lh_head").train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in [*model.neck.parameters(), *model.heads.parameters()])
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.neck.training
    stats = bns[0].running_mean.clone()
    out = model(torch.randn(2, 3, 64, 64))
    out["gender"].sum().backward()
    torch.testing.assert_close(bns[0].running_mean, stats)  # a fixed feature extractor
    assert all(p.grad is None for p in model.backbone.parameters())

    model.freeze_backbone(trainable_last_n=2)
    last = [p for b in model.backbone_blocks()[-2:] for p in b.parameters()]
    n_trainable = sum(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in last) and n_trainable == len(last)
    assert model.backbone.layer4[2].bn1.training and not model.backbone.layer1[0].bn1.training
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.backbone.parameters()) and bns[0].training
    assert all(p.requires_grad for p in create_model("resnet18").parameters())
    unfrozen = create_model("resnet50_lh_head", freeze_backbone=False)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_reduced_levi_hassner_param_count() -> None:
    assert model_info("levi_hassner")["params"] == 11_416_074
    assert model_info("levi_hassner_reduced")["params"] == 717_450


def test_grid_pool_matches_adaptive_pool() -> None:
    for h, w in [(1, 1), (3, 5), (7, 7), (14, 14), (13, 15)]:
        x = torch.randn(2, 4, h, w)
        for grid in (2, 7):
            expected = nn.functional.adaptive_avg_pool2d(x, grid)
            torch.testing.assert_close(GridPool(grid)(x), expected)


def test_dex_expected_age() -> None:
    logits = torch.full((2, 101), -1e4)
    logits[0, 30] = 0
    logits[1, 10] = logits[1, 20] = 0
    torch.testing.assert_close(dex_expected_age(logits), torch.tensor([30.0, 15.0]))
    # one read-out for NumPy (predictor, int8 agreement) and torch (training, evaluation)
    from agegender.readout import dex_years

    probs = torch.softmax(torch.randn(3, 101, dtype=torch.float64), -1)
    np.testing.assert_allclose(dex_years(probs.numpy()), dex_years(probs).numpy(), rtol=1e-12)
    assert isinstance(dex_years(probs.numpy()), np.ndarray)


def test_channels_last_matches() -> None:
    model = create_model("small_resnet").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["age"]
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl["age"], ref, rtol=1e-4, atol=1e-5)


def test_register_model_decorator() -> None:
    @register_model("_test_tiny", input_size=32, description="test only")
    def _tiny(tasks: TaskSpec, *, width: int = 4) -> FaceModel:
        from agegender.models.heads import PoolFlatten, make_task_heads

        backbone = nn.Sequential(nn.Conv2d(3, width, 3))
        return FaceModel(backbone, PoolFlatten(), make_task_heads(width, tasks), tasks)

    try:
        model = create_model("_test_tiny", width=6)
        assert model.default_cfg["resize"] == 32 and model.default_cfg["family"] == "test_models"
        assert model(torch.randn(1, 3, 32, 32))["age"].shape == (1, 8)
        with pytest.raises(ValueError, match="already registered"):
            register_model("_test_tiny")(_tiny)
    finally:
        registry_module._REGISTRY.pop("_test_tiny", None)


def test_cli_models_json() -> None:
    from typer.testing import CliRunner

    from agegender.cli import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    infos = json.loads(result.stdout)
    assert [i["name"] for i in infos] == list_models()
    assert all(i["params"] > 0 and i["input_size"] > 0 and i["description"] for i in infos)
    table = CliRunner().invoke(app, ["models"])
    assert table.exit_code == 0 and "small_resnet" in table.stdout
