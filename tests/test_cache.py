"""The decode-once uint8 image cache: alignment, keys, reuse, failures, subsets, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import agegender.data.cache as cache_mod
from agegender.cli import app
from agegender.data.cache import ImageCache, build_cache, default_cache_dir, find_cache
from agegender.data.imageio import load_resized
from agegender.data.records import make_table

SIZE = 24


def _image(seed: int, shape=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))


@pytest.fixture
def faces(tmp_path: Path) -> pd.DataFrame:
    """Five images of different sizes and formats plus one corrupt file, in a table."""
    d = tmp_path / "faces"
    d.mkdir()
    names = []
    for k in range(5):
        name = f"img{k}.{'png' if k % 2 else 'jpg'}"
        _image(k, shape=(40 + 7 * k, 30 + 5 * k)).save(d / name)
        names.append(name)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    names.insert(2, "broken.jpg")
    rows = [dict(path=str(d / n), source="t", line=i + 1) for i, n in enumerate(names)]
    return make_table(rows)


def test_rows_align_with_table_and_failures_are_flagged(faces: pd.DataFrame, tmp_path: Path):
    cache = build_cache(faces, SIZE, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert len(cache) == len(faces) == 6
    assert cache.images.shape == (6, SIZE, SIZE, 3) and cache.images.dtype == np.uint8
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert cache.paths == faces["path"].tolist()
    assert cache.ok.tolist() == [True, True, False, True, True, True]
    assert cache.failed == 1 and not cache.reused
    for i, path in enumerate(faces["path"]):
        if cache.ok[i]:
            np.testing.assert_array_equal(cache.images[i], load_resized(path, SIZE))
    assert not cache.images[2].any()  # zero-filled
    (problem,) = cache.problems
    assert problem.path.endswith("broken.jpg") and problem.line == 3
    assert "corrupt" in problem.reason or "cannot" in problem.reason
    assert cache.folder.parent == tmp_path / "c" and cache.folder.name.startswith(f"faces{SIZE}-")
    index = json.loads((cache.folder / "index.json").read_text())
    assert index["count"] == 6 and index["failed"] == 1 and index["images_per_second"] > 0
    assert not list((tmp_path / "c").glob(".tmp-*"))


def test_second_call_reuses_without_decoding(faces, tmp_path, monkeypatch):
    first = build_cache(faces, SIZE, cache_dir=tmp_path, workers=1, progress=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache exists")

    monkeypatch.setattr(cache_mod, "load_resized", no_decoding)
    second = build_cache(faces, SIZE, cache_dir=tmp_path, workers=1, progress=False)
    assert second.reused and second.key == first.key and second.folder == first.folder
    np.testing.assert_array_equal(second.images, first.images)
    assert second.ok.tolist() == first.ok.tolist() and len(second.problems) == 1
    assert find_cache(faces, SIZE, cache_dir=tmp_path).key == first.key
    assert find_cache(faces, SIZE + 1, cache_dir=tmp_path) is None


def test_changed_file_changes_key_and_rebuilds(faces, tmp_path):
    first = build_cache(faces, SIZE, cache_dir=tmp_path, workers=1, progress=False)
    path = Path(faces["path"].iloc[0])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    touched = build_cache(faces, SIZE, cache_dir=tmp_path, workers=1, progress=False)
    assert touched.key != first.key and not touched.reused

    _image(99).save(path)  # new content
    rewritten = build_cache(faces, SIZE, cache_dir=tmp_path, workers=1, progress=False)
    assert rewritten.key not in (first.key, touched.key) and not rewritten.reused
    np.testing.assert_array_equal(rewritten.images[0], load_resized(path, SIZE))
    assert not np.array_equal(rewritten.images[0], first.images[0])
    np.testing.assert_array_equal(rewritten.images[1:], first.images[1:])

    other_size = build_cache(faces, SIZE + 8, cache_dir=tmp_path, workers=1, progress=False)
    assert other_size.images.shape[1:] == (SIZE + 8, SIZE + 8, 3)
    reordered = build_cache(faces[::-1], SIZE, cache_dir=tmp_path, workers=1, progress=False)
    assert reordered.key != rewritten.key  # rows follow the table order, so does the key
    np.testing.assert_array_equal(reordered.images[::-1], rewritten.images)


def test_rows_for_serves_a_subset(faces, tmp_path):
    cache = build_cache(faces, SIZE, cache_dir=tmp_path, workers=1, progress=False)
    subset = faces.iloc[[5, 0, 3]]
    rows = cache.rows_for(subset["path"])
    assert rows.tolist() == [5, 0, 3] and rows.dtype == np.int64
    for r, path in zip(rows, subset["path"], strict=True):
        np.testing.assert_array_equal(cache.images[r], load_resized(path, SIZE))
    with pytest.raises(KeyError, match="nope.jpg"):
        cache.rows_for([faces["path"].iloc[0], "/somewhere/nope.jpg"])


def test_load_by_key_and_default_dir(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    built = build_cache(faces, SIZE, workers=1, progress=False)
    assert built.folder.parent == tmp_path / "env-cache"
    loaded = ImageCache.load(tmp_path / "env-cache", built.key)
    assert loaded.key == built.key and len(loaded) == 6 and loaded.size == SIZE
    np.testing.assert_array_equal(loaded.images, built.images)
    with pytest.raises(FileNotFoundError):
        ImageCache.load(tmp_path / "env-cache", "0" * 20)


def test_interrupted_build_leaves_no_cache(faces, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "parallel_map", interrupted)
    root = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_cache(faces, SIZE, cache_dir=root, workers=1, progress=False)
    assert list(root.iterdir()) == []  # neither a cache nor a temporary folder
    monkeypatch.undo()
    stale = root / ".tmp-999999999-dead-faces24-x"  # a build killed with SIGKILL
    stale.mkdir()
    cache = build_cache(faces, SIZE, cache_dir=root, workers=1, progress=False)
    assert len(cache) == 6 and not stale.exists()


def test_parallel_build_matches_decoding_each_image(tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    paths = []
    for k in range(80):  # above the serial cut-off: two worker processes write the memmap
        p = d / f"{k:03d}.png"
        _image(k, shape=(20, 20)).save(p)
        paths.append(str(p))
    (d / "bad.png").write_bytes(b"nope")
    paths.insert(40, str(d / "bad.png"))
    table = make_table([dict(path=p, source="t") for p in paths])
    cache = build_cache(table, 16, cache_dir=tmp_path / "c", workers=2, progress=False)
    assert cache.ok.sum() == 80 and not cache.ok[40]
    expected = np.stack([load_resized(p, 16) if k != 40 else np.zeros((16, 16, 3), np.uint8)
                         for k, p in enumerate(paths)])  # fmt: skip
    np.testing.assert_array_equal(cache.images, expected)


def test_bad_arguments(faces, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        build_cache(faces.iloc[:0], SIZE, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="positive"):
        build_cache(faces, 0, cache_dir=tmp_path)


def test_cli_cache(tmp_path):
    root = tmp_path / "utk"
    root.mkdir()
    for k in range(3):
        _image(k, shape=(50, 50)).save(root / f"{20 + k}_{k % 2}_0_2017010100000{k}.jpg.chip.jpg")
    args = ["data", "cache", str(root), "--size", "32", "--cache-dir", str(tmp_path / "c")]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["images"] == 3 and info["failed"] == 0 and not info["reused"]
    assert Path(info["cache"]).parent == tmp_path / "c"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "reused" in res.stdout and "3 images at 32x32" in res.stdout
    res = CliRunner().invoke(app, ["data", "cache", str(tmp_path / "none"), "--size", "32"])
    assert res.exit_code == 2 and "none" in res.stderr
