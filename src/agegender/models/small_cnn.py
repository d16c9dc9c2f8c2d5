"""Small from-scratch networks for CPU training on 64-112 px faces.

- ``small_cnn``: the reports' multi-output CNN (4 conv blocks, a gender and an age branch),
  made decent with global average pooling instead of flatten.
- ``small_resnet``: a compact ResNet (timm ``BasicBlock``s, ResNet-D average-pool
  shortcuts, a one-conv stride-2 stem and no max-pool so 64 px faces keep a 4x4 map).
  Plain conv/BN/ReLU/add/avg-pool: channels_last friendly and ONNX exportable.
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.models.resnet import BasicBlock
from torch import nn

from agegender.models.heads import MLP, PoolFlatten, TaskSpec, make_task_heads
from agegender.models.registry import FaceModel, register_model


def _init_convs(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_model(
    "small_cnn",
    input_size=64,
    min_input_size=16,
    description="small multi-output CNN, 4 conv blocks 16-32-64-128 + GAP, gender and age "
    "branches (fast CPU baseline)",
)
def small_cnn(
    tasks: TaskSpec,
    *,
    filters: Sequence[int] = (16, 32, 64, 128),
    block_dropout: float = 0.1,
    head_hidden: Sequence[int] = (64,),
    dropout: float | Sequence[float] = 0.3,
) -> FaceModel:
    """``conv3x3 -> ReLU -> BatchNorm -> maxpool 2 -> dropout`` x4, global average pool,
    then per task ``Dense(head_hidden) -> ReLU -> dropout -> output`` (~115K parameters)."""
    blocks = []
    prev = 3
    for f in filters:
        blocks.append(
            nn.Sequential(
                nn.Conv2d(prev, int(f), 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(int(f)),
                nn.MaxPool2d(2),
                nn.Dropout(block_dropout) if block_dropout > 0 else nn.Identity(),
            )
        )
        prev = int(f)
    backbone = nn.Sequential(*blocks)
    _init_convs(backbone)
    heads = make_task_heads(prev, tasks, head_hidden, dropout)
    return FaceModel(backbone, PoolFlatten(), heads, tasks)


def _stage(cin: int, cout: int, depth: int, stride: int) -> nn.Sequential:
    blocks = []
    for i in range(depth):
        s = stride if i == 0 else 1
        down = None
        if s != 1 or cin != cout:
            pool = (
                nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
                if s != 1
                else nn.Identity()
            )
            down = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        blocks.append(BasicBlock(cin, cout, stride=s, downsample=down))
        cin = cout
    return nn.Sequential(*blocks)


@register_model(
    "small_resnet",
    input_size=64,
    min_input_size=32,
    description="compact ResNet (1.5M params, ~50 MMAC at 64 px: stem s2 + 3 stages "
    "48-96-192); fast CPU default for 64-112 px",
)
def small_resnet(
    tasks: TaskSpec,
    *,
    channels: Sequence[int] = (48, 96, 192),
    depths: Sequence[int] = (1, 2, 2),
    stem_width: int = 32,
    head_hidden: Sequence[int] = (),
    dropout: float | Sequence[float] = 0.2,
) -> FaceModel:
    """Stem ``conv3x3/2`` then stages of BasicBlocks, each starting with stride 2
    (total stride 16: 64 px -> 4x4, 96 px -> 6x6), global average pool, dropout, heads.

    ~1.5M parameters and ~50M multiply-adds per 64 px face (3x small_cnn): resolution
    drops early, where plain 3x3 convs are cheapest on CPU, and the width sits at 8x8/4x4.
    Blocks start as identities (zero-initialised last BN) so it trains at high rates.
    """
    stem = nn.Sequential(
        nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
    )
    stages = []
    prev = stem_width
    for c, d in zip(channels, depths, strict=True):
        stages.append(_stage(prev, int(c), int(d), 2))
        prev = int(c)
    backbone = nn.Sequential(stem, *stages)
    _init_convs(backbone)
    for m in backbone.modules():
        if isinstance(m, BasicBlock):
            m.zero_init_last()
    mlp = MLP(prev, head_hidden, dropout)
    neck = nn.Sequential(PoolFlatten(), mlp)
    return FaceModel(backbone, neck, make_task_heads(mlp.out_features, tasks), tasks)
