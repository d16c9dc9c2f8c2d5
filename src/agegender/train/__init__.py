"""Training: ``train(config, out_dir, resume=False) -> RunResult`` and
``load_model(checkpoint) -> (model, meta)``.

>>> from agegender.train import train, load_model
>>> result = train("configs/default.yaml", "runs/default")
>>> model, meta = load_model(result.best_checkpoint)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agegender.artifact import load_model
    from agegender.train.run import RunResult, train

__all__ = ["RunResult", "load_model", "train"]


def __getattr__(name: str) -> Any:  # lazy: importing the package stays cheap
    if name == "load_model":
        from agegender.artifact import load_model

        return load_model
    if name in ("train", "RunResult"):
        from agegender.train import run

        return getattr(run, name)
    raise AttributeError(name)
