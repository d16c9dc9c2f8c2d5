"""Shared fixtures: the real data beside the repo (``AGEGENDER_DATA`` or ``../shared/data``)
and the ``realdata`` marker.

Every test that uses a real-data fixture (:data:`REAL_DATA_FIXTURES`, directly or through
another fixture) is marked ``realdata``, so ``pytest -m "not realdata"`` runs the unit
suite alone; without the data those tests skip.
"""

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


#: The fixtures that hand a test real data (each skips the test when its data is absent).
REAL_DATA_FIXTURES = frozenset(
    {"real_data_root", "utkface_dir", "adience_dir", "celeba_dir", "fairface_dir"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``realdata`` every test whose fixture closure holds a real-data fixture."""
    for item in items:
        if REAL_DATA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """``data_root()`` for a test that looks in several of its folders; skips without it."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set AGEGENDER_DATA)")
    return root


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
