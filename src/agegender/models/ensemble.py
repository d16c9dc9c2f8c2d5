"""Several trained models as one: the mean of their probabilities.

Members see the same normalised batch (so they must share input size, normalisation and
face framing: :func:`agegender.artifact.ensemble_meta` checks) and each returns its usual
outputs. The ensemble returns, per task, ``log(mean of the members' softmax)`` as logits,
so everything downstream (``softmax`` in :func:`agegender.artifact.output_probabilities`,
the ONNX graph, the losses of evaluation) sees the plain average of the members'
probabilities; a regression age is the mean of the members' years.

``agegender export A.ckpt B.ckpt --onnx ens.onnx --pt ens.pt`` writes one; it loads,
predicts, calibrates and serves like any other model file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def shared_prefix(members: Sequence[nn.Module]) -> int:
    """How many leading backbone blocks every member has with identical weights (members
    fine-tuned from the same frozen start, e.g. ``model.precompute_blocks``): 0 when the
    backbones are not block sequences of the same shape."""
    blocks = [getattr(m, "backbone_blocks", lambda: [])() for m in members]
    if not all(isinstance(getattr(m, "backbone", None), nn.Sequential) for m in members):
        return 0
    n = 0
    for group in zip(*blocks, strict=False):
        states = [b.state_dict() for b in group]
        first = states[0]
        same = all(
            s.keys() == first.keys()
            and all(s[k].shape == first[k].shape and torch.equal(s[k], first[k]) for k in s)
            for s in states[1:]
        )
        if not same:
            break
        n += 1
    return n


class Ensemble(nn.Module):
    """The members' mean probabilities, as logits (see the module docstring).

    ``shared_blocks``: the leading backbone blocks the members share (see
    :func:`shared_prefix`); they are tied to the first member's and run once per batch, so
    an ensemble of fine-tuned tops over one frozen trunk costs little more than one model
    (and its file holds the trunk once)."""

    def __init__(self, members: Sequence[nn.Module], age: str, shared_blocks: int = 0) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.age = age
        self.name = "ensemble"
        self.shared_blocks = int(shared_blocks)
        for m in members[1:]:
            for i in range(self.shared_blocks):
                m.backbone[i] = members[0].backbone[i]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.shared_blocks
        if k:
            z = self.members[0].forward_prefix(k, x)
            outs = [m.forward_from(k, z) for m in self.members]
        else:
            outs = [m(x) for m in self.members]
        merged: dict[str, torch.Tensor] = {}
        for key in outs[0]:
            values = torch.stack([o[key].float() for o in outs])
            if key == "age" and self.age == "regression":
                merged[key] = values.mean(0)
            else:  # log of the mean probability: softmax of it is that mean
                merged[key] = torch.logsumexp(values.log_softmax(-1), 0) - math.log(len(outs))
        return merged
