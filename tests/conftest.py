"""Shared fixtures: the real data beside the repo (``AGEGENDER_DATA`` or ``../shared/data``),
generated data shared by several test files, and the ``realdata`` marker.

Every test that uses a real-data fixture (:data:`REAL_DATA_FIXTURES`, directly or through
another fixture) is marked ``realdata``, so ``pytest -m "not realdata"`` runs the unit
suite alone; without the data those tests skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """Import a repo script (``benchmarks/x.py``, ``scripts/x.py``) as a module; it is
    registered in ``sys.modules`` (dataclasses look their module up there)."""
    import importlib.util
    import sys

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def data_root() -> Path:
    return Path(os.environ.get("AGEGENDER_DATA", REPO.parent / "shared" / "data"))


def real_data(folder: str, what: str) -> Path:
    """``data_root()/folder``, or skip the test with a reason when it is absent."""
    p = data_root() / folder
    if not p.is_dir():
        pytest.skip(f"{what} not found at {p} (set AGEGENDER_DATA)")
    return p


def assert_inputs_once(table, expected: set[str]) -> dict[str, int]:
    """A prediction output (Arrow table) holds every expected input exactly once: each
    path's rows are one run's, its face indexes 0..n-1 appear once each without an error
    (or it has one row without a face). Returns {run_id: inputs written by that run}."""
    frame = table.to_pandas()
    assert set(frame["path"]) == expected
    for path, rows in frame.groupby("path"):
        assert rows["run_id"].nunique() == 1, path
        faces = rows["face_index"].dropna().astype(int).tolist()
        if faces:
            assert sorted(faces) == list(range(len(faces))), (path, faces)
            assert rows["error"].isna().all(), path
        else:
            assert len(rows) == 1, (path, len(rows))
    return frame.groupby("run_id")["path"].nunique().to_dict()


#: The fixtures that hand a test real data (each skips the test when its data is absent).
REAL_DATA_FIXTURES = frozenset(
    {
        "real_data_root",
        "utkface_dir",
        "adience_dir",
        "adience_part_dir",
        "celeba_dir",
        "fairface_dir",
        "aaf_dir",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``realdata`` every test whose fixture closure holds a real-data fixture."""
    for item in items:
        if REAL_DATA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture()
def hide_module(monkeypatch: pytest.MonkeyPatch):
    """``hide_module(owner, name)``: ``owner.importlib.import_module(name)`` raises
    ImportError, as if the package ``name`` were not installed."""

    def hide(owner, name: str) -> None:
        real = owner.importlib.import_module

        def fake(mod: str, *args, **kwargs):
            if mod == name:
                raise ImportError(mod)
            return real(mod, *args, **kwargs)

        monkeypatch.setattr(owner.importlib, "import_module", fake)

    return hide


@pytest.fixture()
def config_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A data root for validating configs, which name ``${AGEGENDER_DATA}`` but read no
    images: the real one when it exists, else a temporary stand-in (a clone with nothing
    beside it would otherwise fail on the missing root)."""
    import agegender.config

    if os.environ.get("AGEGENDER_DATA") or agegender.config.DEFAULT_DATA_ROOT.is_dir():
        return data_root()
    monkeypatch.setenv("AGEGENDER_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


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
def adience_part_dir() -> Path:
    """``adience-fold0-part``: 1,586 photos of 93 people from Adience's fold 0."""
    return real_data("adience-fold0-part", "Adience fold 0 part")


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    return real_data("celeba-10k", "CelebA-10k")


@pytest.fixture(scope="session")
def fairface_dir() -> Path:
    return real_data("fairface-540", "FairFace-540")


@pytest.fixture(scope="session")
def aaf_dir() -> Path:
    """All-Age-Faces as its publisher lays it out (not in ../shared/data: fetched into a
    data root of one's own, see the README's Data section)."""
    return real_data("all-age-faces", "All-Age-Faces")


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


# ------------------------------------------------------------- a tiny generated UTKFace
# Shared by test_cv.py, test_evaluate.py and test_report.py: 80 faces whose two genders
# differ visibly (red vs blue tint), one broken file, and a 2-fold CV run over them.
N_IMAGES = 80
BROKEN = "30_0_0_20170101120000999.jpg.chip.jpg"


def _face(rng: np.random.Generator, female: bool) -> np.ndarray:
    """Random low-frequency texture (distinct perceptual hashes) tinted by the class."""
    grid = rng.uniform(40, 215, size=(6, 6))
    tex = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((48, 48), Image.BILINEAR))
    tex = tex.astype(float)
    img = np.stack([tex * 0.35, tex * 0.35, tex * 0.35], axis=-1)
    img[..., 0 if female else 2] += 150
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_utkface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_utkface")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        female = i % 2 == 1
        age = [4, 26, 40, 65][(i // 2) % 4]
        race = i % 5
        name = f"{age}_{int(female)}_{race}_2017010{i % 10}1200{i:04d}.jpg.chip.jpg"
        Image.fromarray(_face(rng, female)).save(root / name, quality=95)
    (root / BROKEN).write_text("not a jpeg")  # the audit leaves it out; evaluate reports it
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_utkface: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    cfg = {
        "name": "tiny",
        "data": {"path": str(tiny_utkface), "format": "utkface", "size": 32, "input_size": 32},
        "model": {"name": "small_cnn"},
        "task": {"gender": True, "age": "dex", "gamma": 0.7},
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "none"},
        "train": {
            "epochs": 3,
            "batch_size": 16,
            "progress_bar": False,
            "early_stopping": {"monitor": "val/loss", "patience": None},
        },
        "augment": {"recipe": [{"hflip": 0.5}]},
        "trainer": {"accelerator": "cpu"},
        "logger": {"tensorboard": False, "csv": False},
    }
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def cv_run(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``agegender cv`` with 2 folds on the tiny dataset (through the CLI)."""
    from typer.testing import CliRunner

    from agegender.cli import app

    out = tmp_path_factory.mktemp("cv") / "tiny-cv"
    res = CliRunner().invoke(
        app, ["cv", str(tiny_config), "--folds", "2", "--out", str(out)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    return out


# ------------------------------------------------------------------- real faces in photos
# Shared by test_detector.py and test_predictor.py (test_serve.py makes its own, fewer).
@pytest.fixture(scope="session")
def photos(utkface_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """250x250 JPEG photos with one real UTKFace face pasted on a blurred background."""
    from agegender.infer.bench import make_photos

    return make_photos(utkface_dir, tmp_path_factory.mktemp("photos"), n=24, seed=1)
