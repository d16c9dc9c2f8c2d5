"""The model zoo: every registered model builds, runs forward/backward and has the promised
outputs (shaped like timm's tests/test_models.py), plus the registry, heads and weights."""

from __future__ import annotations

import io
import json

import pytest
import timm
import torch
from torch import nn

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


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, TaskSpec(gender=True, age="groups"))
    assert isinstance(model, FaceModel)
    assert model.name == name and model.tasks == TaskSpec()
    cfg = model.default_cfg
    assert {"input_size", "resize", "mean", "std", "description"} <= set(cfg)
    assert cfg["resize"] >= cfg["input_size"] and len(cfg["mean"]) == len(cfg["std"]) == 3
    assert model_info(name)["params"] == sum(p.numel() for p in model.parameters())
    blocks = model.backbone_blocks()
    backbone_params = {id(p) for p in model.backbone.parameters()}
    assert blocks and all(id(p) in backbone_params for b in blocks for p in b.parameters())

    model.train()
    size = _size(name)
    out = model(torch.randn(2, 3, size, size))
    assert set(out) == {"gender", "age"}
    assert out["gender"].shape == (2, 2) and out["age"].shape == (2, 8)
    assert all(torch.isfinite(v).all() for v in out.values())
    (out["gender"].logsumexp(1) + out["age"].logsumexp(1)).mean().backward()

    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable[0].grad is not None and trainable[0].grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient (breaks DDP): {unused[:5]}"
    first = next(model.backbone.parameters())
    if first.requires_grad:  # gradients reach the very first conv
        assert first.grad is not None and first.grad.abs().sum() > 0
    else:
        assert first.grad is None


@pytest.mark.parametrize("name", ["small_cnn", "small_resnet", "levi_hassner_reduced"])
def test_age_modes(name: str) -> None:
    x = torch.randn(3, 3, 64, 64)
    shapes = {"groups": (3, 8), "regression": (3,), "dex": (3, 101)}
    for age, shape in shapes.items():
        model = create_model(name, TaskSpec(gender=True, age=age)).eval()
        with torch.no_grad():
            out = model(x)
        assert out["gender"].shape == (3, 2) and out["age"].shape == shape
    with torch.no_grad():
        only_age = create_model(name, TaskSpec(gender=False, age="regression")).eval()(x)
        only_gender = create_model(name, {"gender": True, "age": "none"}).eval()(x)
    assert set(only_age) == {"age"} and set(only_gender) == {"gender"}
    # the regression head starts near the prior (~33 years), not at 0
    assert ((only_age["age"] - 33).abs() < 10).all()


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


def test_channels_last_matches() -> None:
    model = create_model("small_resnet").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["age"]
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl["age"], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore")  # tracer / constant-folding chatter
@pytest.mark.parametrize(("name", "size"), [("small_resnet", 64), ("levi_hassner", 64)])
def test_onnx_export(name: str, size: int) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name).eval()
    x = torch.randn(2, 3, size, size)
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (x,),
        buf,
        input_names=["input"],
        output_names=["gender", "age"],
        dynamic_axes={"input": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, size, size)
    gender, age = session.run(None, {"input": x3.numpy()})
    with torch.no_grad():
        ref = model(x3)
    torch.testing.assert_close(torch.from_numpy(gender), ref["gender"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(age), ref["age"], rtol=1e-4, atol=1e-4)


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
