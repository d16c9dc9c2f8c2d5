"""What a model's outputs mean: the read-out every path shares, below :mod:`agegender.artifact`.

A model's probability outputs are named once (:data:`GENDER_OUTPUT`, :data:`AGE_OUTPUTS`)
and read once:

- **the gender decision** — :class:`GenderDecision` (a meta's ``gender_decision``, read by
  :func:`parse_decision`, written by ``agegender calibrate``): the network's P(female)
  above a threshold (0.5, the calibrated one, or its predicted-age band's own) is female
  (:func:`gender_labels`), and the P(female) every output reports is that output moved so
  the decision falls at 0.5, with the slope fitted on validation faces
  (:func:`gender_probability`): the label is always the more probable gender.
- **the age read-out** — :func:`dex_years` (the DEX expectation in years),
  :func:`dex_group_matrix` (DEX years -> Adience groups) and :func:`output_years` (each
  face's predicted age from any age output).

The model file (:mod:`agegender.artifact`), the metrics, training, the predictor and the
int8 check all import these; this module imports only NumPy, SciPy and PyTorch (lazily)
and the label conventions of :mod:`agegender.data.records`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agegender.data.records import AGE_GROUP_NAMES, ages_to_groups

#: Output names shared by the torch path and the exported ONNX graph (probabilities).
GENDER_OUTPUT = "gender_probs"
AGE_OUTPUTS = {"groups": "age_group_probs", "regression": "age_years", "dex": "age_probs"}
AGE_MODES = ("none", *AGE_OUTPUTS)

#: Representative age (years) of each Adience group, for the age estimate of a groups
#: model: the interval midpoints, and for 60+ the mean age of UTKFace faces aged 57 or
#: more (70 years, 3140 faces), i.e. of the faces the age-to-group rule puts in 60+.
AGE_GROUP_MIDPOINTS: tuple[float, ...] = (1.0, 5.0, 10.5, 17.5, 28.5, 40.5, 50.5, 70.0)

#: The P(female) above which a face is called female, unless the model's meta carries its
#: own ``gender_decision.threshold`` (chosen on validation faces by ``agegender calibrate``).
#: It is also the threshold on every *reported* P(female): :func:`gender_probability` moves
#: a calibrated model's probabilities so that its decision falls at 0.5.
GENDER_THRESHOLD = 0.5

#: Probabilities are kept this far from 0 and 1 before taking their log-odds.
_EPS = 1e-12


@dataclass(frozen=True)
class GenderDecision:
    """How a model turns its network's P(female) (``p_raw``) into a label and the P(female)
    it reports, read from the meta's ``gender_decision`` (:func:`parse_meta`).

    - **label**: female where ``p_raw`` is above the face's threshold: ``threshold`` (chosen
      on validation faces), or, with ``age_edges``, the threshold of the band of the face's
      *predicted* age: band ``i`` holds ages in ``[age_edges[i-1], age_edges[i])`` (the first
      from 0, the last open-ended) and has ``band_thresholds[i]``. A face without a
      predicted age (a model without an age output) gets ``threshold``.
    - **reported P(female)**: ``sigmoid(slope * (logit(p_raw) - logit(t)))`` with ``t`` the
      face's threshold: above 0.5 exactly where the label is female, and with ``slope``
      fitted on the validation faces (Platt scaling with its intercept tied to the
      decision). A meta with a threshold alone (models calibrated before) is the shift
      alone (``slope`` 1): the same labels as before, probabilities moved to agree.

    The default (no ``gender_decision``) is the network's own output at 0.5, unchanged.
    """

    threshold: float = GENDER_THRESHOLD
    slope: float = 1.0
    age_edges: tuple[float, ...] = ()
    band_thresholds: tuple[float, ...] = ()

    @property
    def identity(self) -> bool:
        """True when the decision is the network's own output at 0.5 (nothing to apply)."""
        return (
            self.threshold == GENDER_THRESHOLD
            and self.slope == 1.0
            and all(t == GENDER_THRESHOLD for t in self.band_thresholds)
        )

    def thresholds(self, n: int, age: Any = None) -> np.ndarray:
        """The threshold on the network's P(female) of each of ``n`` faces, from their
        predicted ages (years; NaN or ``None``: the global threshold)."""
        out = np.full(n, self.threshold, dtype=np.float64)
        if not self.age_edges or age is None:
            return out
        years = np.asarray(age, dtype=np.float64).reshape(-1)
        if len(years) != n:
            raise ValueError(f"{len(years)} ages for {n} faces")
        known = np.isfinite(years)
        band = np.searchsorted(np.asarray(self.age_edges), years[known], side="right")
        out[known] = np.asarray(self.band_thresholds, dtype=np.float64)[band]
        return out

    def band_names(self) -> list[str]:
        """Readable names of the age bands: ``["<13", "13-19", "20+"]`` for edges 13, 20."""
        e = [f"{v:g}" for v in self.age_edges]
        if not e:
            return []
        middle = [f"{a}-{float(b) - 1:g}" for a, b in zip(e, self.age_edges[1:], strict=False)]
        return [f"<{e[0]}", *middle, f"{e[-1]}+"]

    def describe(self) -> dict[str, Any]:
        """The decision as plain values (``/healthz``, ``Predictor.info``)."""
        out: dict[str, Any] = {"threshold": self.threshold, "slope": self.slope}
        if self.age_edges:
            out["age_bands"] = [
                {"predicted_age": name, "threshold": t}
                for name, t in zip(self.band_names(), self.band_thresholds, strict=True)
            ]
        return out


#: A model's decision when its meta has none: the network's output at 0.5.
NO_DECISION = GenderDecision()


def gender_labels(
    p_female: Any, threshold: float | GenderDecision = GENDER_THRESHOLD, age: Any = None
) -> np.ndarray:
    """The gender decision, the one place it is made: 1 (female) where ``p_female`` is
    above the threshold, 0 (male) elsewhere, -1 where ``p_female`` is missing (NaN).

    ``threshold``: a number, or a model's :class:`GenderDecision` (``p_female`` is then the
    network's own output and ``age`` each face's predicted age in years, which picks the
    threshold of its age band when the decision has bands)."""
    p = np.asarray(p_female, dtype=np.float64)
    if isinstance(threshold, GenderDecision):
        shape = p.shape
        t: Any = threshold.thresholds(p.size, age).reshape(shape)
    else:
        t = threshold
    return np.where(np.isnan(p), -1, (p > t).astype(np.int64))


def gender_probability(p_raw: Any, decision: GenderDecision = NO_DECISION, age: Any = None) -> Any:
    """The P(female) a model reports for the network's ``p_raw`` (faces' predicted ages in
    ``age``, for a decision with age bands): ``sigmoid(slope * (logit(p_raw) - logit(t)))``,
    above 0.5 exactly where :func:`gender_labels` says female (a face exactly at its
    threshold reads 0.5, male). ``p_raw`` itself for a model without a decision. NaN stays
    NaN. Same shape as ``p_raw``."""
    from scipy.special import expit, logit

    p = np.asarray(p_raw, dtype=np.float64)
    if decision.identity:
        return p
    t = decision.thresholds(p.size, age).reshape(p.shape)
    q = np.clip(p, _EPS, 1 - _EPS)
    out = expit(decision.slope * (logit(q) - logit(t)))
    female = gender_labels(p, decision, age)
    # one story even in the last bit: a female face never reads below 0.5, a male one above
    out = np.where(female == 1, np.maximum(out, 0.5), np.minimum(out, 0.5))
    return np.where(np.isnan(p), np.nan, out)


def output_years(outputs: Mapping[str, Any], age_mode: str) -> np.ndarray | None:
    """Each face's predicted age in years from a model's probability outputs (as the
    predictor reports it: the DEX expectation, the group midpoints weighted by their
    probabilities, or the regression's years, at least 0), or None without an age output."""
    out = outputs.get(AGE_OUTPUTS.get(age_mode, ""))
    if out is None:
        return None
    out = np.asarray(out, dtype=np.float64)
    if age_mode == "dex":
        return np.asarray(dex_years(out))
    if age_mode == "groups":
        return out @ np.asarray(AGE_GROUP_MIDPOINTS)
    years = out.reshape(-1)
    return np.where(np.isfinite(years), np.maximum(years, 0.0), np.nan)


def _probability_in(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 < value < 1.0:
        raise ValueError(f"model meta {what} must be a number in (0, 1)")
    return float(value)


def parse_decision(decision: Any) -> GenderDecision:
    """The :class:`GenderDecision` of a meta's ``gender_decision`` (None: the network's
    output at 0.5). Reads ``threshold``; ``probability.slope`` (default 1: the threshold as
    a shift alone); ``age_bands.edges`` (increasing ages in years) with one
    ``age_bands.bands[i].threshold`` per band. ``ValueError`` naming the bad key."""
    if decision is None:
        return NO_DECISION
    if not isinstance(decision, Mapping):
        raise ValueError("model meta gender_decision.threshold must be a number in (0, 1)")
    threshold = _probability_in(decision.get("threshold"), "gender_decision.threshold")
    slope = 1.0
    prob = decision.get("probability")
    if prob is not None:
        a = prob.get("slope") if isinstance(prob, Mapping) else None
        if not isinstance(a, int | float) or isinstance(a, bool) or not 0.0 < a < float("inf"):
            raise ValueError("model meta gender_decision.probability.slope must be a number > 0")
        slope = float(a)
    edges: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()
    bands = decision.get("age_bands")
    if bands is not None:
        e = bands.get("edges") if isinstance(bands, Mapping) else None
        ok = isinstance(e, list | tuple) and len(e) > 0
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in e)
        if not ok or not all(a < b for a, b in zip([0, *e], e, strict=False)):
            raise ValueError(
                "model meta gender_decision.age_bands.edges must be increasing ages > 0"
            )
        listed = bands.get("bands")
        if not isinstance(listed, list | tuple) or len(listed) != len(e) + 1:
            raise ValueError(
                f"model meta gender_decision.age_bands.bands must list {len(e) + 1} bands"
            )
        thresholds = tuple(
            _probability_in(
                b.get("threshold") if isinstance(b, Mapping) else None,
                f"gender_decision.age_bands.bands[{i}].threshold",
            )
            for i, b in enumerate(listed)
        )
        edges = tuple(float(v) for v in e)
    return GenderDecision(threshold, slope, edges, thresholds)


def dex_years(probs: Any) -> Any:
    """The DEX read-out: the expected age in years, ``sum_k p_k * k``, of age probabilities
    ``(..., n_ages)`` over the years 0..n-1 (a NumPy array or a torch tensor, same kind
    back). Every path that turns DEX probabilities into years (training metrics, evaluation,
    the predictor, int8 agreement) calls this."""
    n = probs.shape[-1]
    if isinstance(probs, np.ndarray):
        return probs @ np.arange(n, dtype=probs.dtype)
    import torch

    return (probs * torch.arange(n, dtype=probs.dtype, device=probs.device)).sum(-1)


def dex_group_matrix(n_ages: int) -> np.ndarray:
    """``(n_ages, 8)`` 0/1 float32 matrix: the Adience group of each DEX age (0..n-1), so
    ``p_years @ matrix`` gives the group probabilities."""
    groups = ages_to_groups(np.arange(n_ages, dtype=float))
    m = np.zeros((n_ages, len(AGE_GROUP_NAMES)), np.float32)
    m[np.arange(n_ages), groups] = 1.0
    return m
