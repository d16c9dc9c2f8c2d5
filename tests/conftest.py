"""Shared fixtures: the real data beside the repo (``AGEGENDER_DATA`` or ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("AGEGENDER_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def utkface_dir() -> Path:
    p = data_root() / "utkface"
    if not p.is_dir():
        pytest.skip(f"real UTKFace data not found at {p} (set AGEGENDER_DATA)")
    return p


@pytest.fixture(scope="session")
def adience_dir() -> Path:
    p = data_root() / "adience-sample"
    if not p.is_dir():
        pytest.skip(f"Adience sample not found at {p} (set AGEGENDER_DATA)")
    return p


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    p = data_root() / "celeba-10k"
    if not p.is_dir():
        pytest.skip(f"CelebA-10k not found at {p} (set AGEGENDER_DATA)")
    return p


@pytest.fixture(scope="session")
def fairface_dir() -> Path:
    p = data_root() / "fairface-540"
    if not p.is_dir():
        pytest.skip(f"FairFace-540 not found at {p} (set AGEGENDER_DATA)")
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep every test's image cache out of the user's home."""
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module: CI shares its 2 cores (the decode threads use
    the other one), and torch's spinning threads then crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
