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

from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """The members' mean probabilities, as logits (see the module docstring)."""

    def __init__(self, members: Sequence[nn.Module], age: str) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.age = age
        self.name = "ensemble"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [m(x) for m in self.members]
        merged: dict[str, torch.Tensor] = {}
        for key in outs[0]:
            values = torch.stack([o[key].float() for o in outs])
            if key == "age" and self.age == "regression":
                merged[key] = values.mean(0)
            else:  # log of the mean probability: softmax of it is that mean
                merged[key] = torch.logsumexp(values.log_softmax(-1), 0) - torch.log(
                    torch.tensor(float(len(outs)))
                )
        return merged
