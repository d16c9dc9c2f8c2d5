"""Shared fixtures: the real data beside the repo (``AGEGENDER_DATA`` or ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("AGEGENDER_DATA", REPO.parent / "shared" / "data"))


def real_data(folder: str, what: str) -> Path:
    """``data_root()/folder``, or skip the test with a reason when it is absent."""
    p = data_root() / folder
    if not p.is_dir():
        pytest.skip(f"{what} not found at {p} (set AGEGENDER_DATA)")
    return p


@pytest.fixture(scope="session")
def utkface_dir() -> Path:
    return real_data("utkface", "real UTKFace data")


@pytest.fixture(scope="session")
def adience_dir() -> Path:
    return real_data("adience-sample", "Adience sample")


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    return real_data("celeba-10k", "CelebA-10k")


@pytest.fixture(scope="session")
def fairface_dir() -> Path:
    return real_data("fairface-540", "FairFace-540")


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


@pytest.fixture(scope="session")
def postgres_url():
    """``postgresql://postgres@127.0.0.1:PORT/tests`` on a throwaway local server (see
    ``tests/pgserver.py``), or skip with the reason it cannot start."""
    from contextlib import ExitStack

    from pgserver import Unavailable, postgres_server

    with ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server())
        except Unavailable as exc:
            pytest.skip(f"PostgreSQL server not available: {exc}")
        yield url
