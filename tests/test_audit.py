"""The dataset audit: odd files, exact / near duplicates, look-alikes, label conflicts."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from agegender.cli import app
from agegender.data.audit import (
    audit_dataset,
    gradient_features,
    hash_pairs,
    near_duplicate_pairs,
    phash_batch,
    pixel_features,
    print_report,
)
from agegender.data.imageio import ImageError, load_resized, open_image
from agegender.data.parallel import parallel_map
from agegender.data.records import Problem, ReadResult, make_table


# ------------------------------------------------------------------ synthetic images
def _field(seed: int, sigma: float, shape=(200, 200)) -> np.ndarray:
    f = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return f / f.std()


def face_like(detail_seed: int) -> Image.Image:
    """A 200x200 image: a shared smooth layout (like aligned faces) + its own fine detail.

    Two such images with different ``detail_seed`` are look-alikes: close pHash (a
    near-duplicate *candidate*) and pixel correlation ~0.95, but different photos.
    """
    img = 128 + 40 * _field(0, 20) + 10 * _field(detail_seed, 3)
    rgb = np.stack([img, img * 0.9 + 10, img * 0.8 + 20], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def thumb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` RGB pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
def odd_dataset(tmp_path: Path) -> ReadResult:
    """Files of every kind the audit must handle, with labels (some conflicting)."""
    d = tmp_path / "faces"
    d.mkdir()
    a = face_like(1)
    a_bytes = jpeg_bytes(a)
    files: dict[str, tuple[int | None, float | None]] = {}  # name -> (gender, age)

    def put(name: str, data: bytes, gender: int | None, age: float | None) -> None:
        (d / name).write_bytes(data)
        files[name] = (gender, age)

    put("a.jpg", a_bytes, 0, 30)
    put("a_copy1.jpg", a_bytes, 0, 30)  # byte-identical
    put("a_copy2.jpg", a_bytes, 1, 30)  # byte-identical, gender disagrees -> conflict
    near = a.filter(ImageFilter.GaussianBlur(1.5))
    put("a_near.jpg", jpeg_bytes(near, quality=50), 0, 31)  # re-encoded + blurred
    put("b_lookalike.jpg", jpeg_bytes(face_like(2)), 0, 30)  # different photo
    c = face_like(7).rotate(90)  # unrelated image, with an exact copy of its own
    put("c.png", _png(c), 1, 5)
    put("c_copy.png", _png(c), 1, 40)  # age group disagrees -> conflict
    put("truncated.jpg", jpeg_bytes(face_like(3))[:600], 0, 20)
    put("text.jpg", b"this is not an image\n", 1, 20)
    png_header_only(d / "bomb.png", 100_000, 100_000)
    files["bomb.png"] = (0, 20)
    put("gray.png", _png(face_like(4).convert("L")), 1, None)
    put("rgba.png", _png(face_like(5).convert("RGBA")), None, 70)
    cmyk = io.BytesIO()
    face_like(6).convert("CMYK").save(cmyk, "JPEG")
    put("cmyk.jpg", cmyk.getvalue(), 0, 45)
    i16 = Image.fromarray(np.asarray(face_like(8).convert("L"), np.uint16) * 257)
    put("i16.png", _png(i16), 1, 2)

    rows = []
    for line, (name, (gender, age)) in enumerate(files.items(), start=1):
        rows.append(
            dict(path=str(d / name), gender=gender, age=age, subject="", source="test",
                 line=line, age_group=None if age is None else _group(age))
        )  # fmt: skip
    missing = Problem(str(d / "gone.jpg"), 99, "image not found")
    unparsed = d / "unlabelled.jpg"
    unparsed.write_bytes(a_bytes)
    problems = [missing, Problem(str(unparsed), 0, "cannot parse label")]
    return ReadResult(make_table(rows), problems, "test")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _group(age: float) -> int:
    from agegender.data.records import age_to_group

    return age_to_group(age)


def _row(result: ReadResult, name: str) -> int:
    return int(np.flatnonzero(result.table["path"].str.endswith("/" + name))[0])


# ------------------------------------------------------------------ hashing
def test_phash_batch_matches_imagehash():
    rng = np.random.default_rng(0)
    thumbs = [thumb(face_like(s)) for s in range(6)]
    thumbs += [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(30)]
    got = phash_batch(np.stack(thumbs))
    want = [int(str(imagehash.phash(Image.fromarray(t))), 16) for t in thumbs]
    assert got.dtype == np.uint64
    assert [int(h) for h in got] == want


def test_hash_pairs_matches_brute_force():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (40, 3)).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips[:, 0], base ^ flips[:, 0] ^ flips[:, 1]])
    i, j, d = hash_pairs(hashes, threshold=3, chunk=7)
    got = {(int(a), int(b), int(c)) for a, b, c in zip(i, j, d, strict=True)}
    want = set()
    for a in range(len(hashes)):
        for b in range(a + 1, len(hashes)):
            dist = bin(int(hashes[a]) ^ int(hashes[b])).count("1")
            if dist <= 3:
                want.add((a, b, dist))
    assert got == want
    assert len(want) >= 80  # every base with its one- and two-bit flips


def test_lookalike_is_a_candidate_but_not_a_near_duplicate():
    a, b = face_like(1), face_like(2)
    a_near = Image.open(io.BytesIO(jpeg_bytes(a.filter(ImageFilter.GaussianBlur(1.5)), 50)))
    thumbs = np.stack([thumb(a), thumb(a_near), thumb(b)])
    h = phash_batch(thumbs)
    assert bin(int(h[0] ^ h[2])).count("1") <= 12  # pHash alone would merge a and b
    assert float(pixel_features(thumbs)[0] @ pixel_features(thumbs)[2]) > 0.9
    assert float(gradient_features(thumbs)[0] @ gradient_features(thumbs)[2]) < 0.6
    pairs = near_duplicate_pairs(thumbs)
    assert [(int(r.i), int(r.j)) for r in pairs.itertuples()] == [(0, 1)]
    assert pairs.grad_corr.iloc[0] > 0.95


# ------------------------------------------------------------------ odd files via imageio
def test_exif_rotation_is_applied(tmp_path: Path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # left half red
    arr[:, 10:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif.tobytes())
    img = open_image(path)
    assert img.size == (10, 20)  # was 20 wide x 10 high
    rgb = np.asarray(img).astype(int)
    assert rgb[2, 5, 0] > 200 and rgb[2, 5, 2] < 60  # left side went to the top
    assert rgb[17, 5, 2] > 200 and rgb[17, 5, 0] < 60
    out = load_resized(path, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[0, 4, 0] > 200 and out[7, 4, 2] > 200


@pytest.mark.parametrize(
    ("maker", "reason"),
    [
        (lambda p: p.write_bytes(jpeg_bytes(face_like(3))[:600]), "truncated"),
        (lambda p: p.write_bytes(b"hello, not a jpeg"), "not an image"),
        (lambda p: png_header_only(p, 100_000, 100_000), "bomb"),
    ],
)
def test_bad_files_raise_one_line_image_errors(tmp_path: Path, maker, reason: str):
    path = tmp_path / "bad.jpg"
    maker(path)
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_small_max_pixels_refuses_large_images(tmp_path: Path):
    path = tmp_path / "big.png"
    face_like(1).save(path)
    with pytest.raises(ImageError, match="too large"):
        open_image(path, max_pixels=100 * 100)
    result = ReadResult(make_table([dict(path=str(path), source="t")]), [], "t")
    report = audit_dataset(result, workers=1, progress=False, max_pixels=100 * 100)
    assert report.to_dict()["unreadable"] == 1
    assert "too large" in report.problems[0].reason


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P"])
def test_odd_modes_decode_to_rgb(tmp_path: Path, mode: str):
    img = face_like(4)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257)
    else:
        img = img.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_resized(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert 40 < out.mean() < 220  # real content, not a black or white frame


# ------------------------------------------------------------------ the audit
def test_audit_counts_odd_dataset(odd_dataset: ReadResult):
    report = audit_dataset(odd_dataset, workers=1, progress=False)
    s = report.to_dict()
    json.dumps(s)  # JSON-able
    n = len(odd_dataset.table)
    assert s["rows"] == n == 14
    assert s["images"] == n + 1  # + the existing file the reader could not label
    assert s["unreadable"] == 3 and s["readable"] == n - 3
    assert s["label_errors"] == 2
    reasons = {Path(p["path"]).name: p["reason"] for p in s["problems"]}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert "bomb" in reasons["bomb.png"]
    assert reasons["gone.jpg"] == "image not found"
    assert {p["line"] for p in s["problems"] if p["path"].endswith("text.jpg")} == {
        int(odd_dataset.table.loc[_row(odd_dataset, "text.jpg"), "line"])
    }

    assert s["exact_duplicate_groups"] == 2  # a x3, c x2
    assert s["exact_duplicate_files"] == 5
    assert s["near_duplicate_groups"] == 1  # {a, a_copy1, a_copy2, a_near}
    assert s["near_duplicate_files"] == 4
    assert s["near_duplicate_pairs"] == 1
    assert s["duplicate_groups"] == 2 and s["duplicate_files"] == 6
    assert s["label_conflict_groups"] == 2
    assert s["gender_conflict_groups"] == 1 and s["age_group_conflict_groups"] == 1
    assert s["conflict_files"] == 6

    gid = report.group_id
    same = [_row(odd_dataset, x) for x in ("a.jpg", "a_copy1.jpg", "a_copy2.jpg", "a_near.jpg")]
    assert gid.iloc[same].nunique() == 1
    look = _row(odd_dataset, "b_lookalike.jpg")
    assert gid.iloc[look] != gid.iloc[same[0]]
    assert gid.iloc[_row(odd_dataset, "c.png")] == gid.iloc[_row(odd_dataset, "c_copy.png")]
    assert gid.nunique() == n - 4  # 6 rows in 2 groups, the rest alone
    assert report.conflict.sum() == 6 and not report.conflict.iloc[look]
    assert report.group_id.index.equals(odd_dataset.table.index)
    assert not report.readable.iloc[_row(odd_dataset, "bomb.png")]
    for ok in ("gray.png", "rgba.png", "cmyk.jpg", "i16.png"):
        assert report.readable.iloc[_row(odd_dataset, ok)], ok

    assert s["labelled_gender"] == n - 1 and s["labelled_age"] == n - 1
    assert s["gender_balance"] == {"male": 7, "female": 6, "unknown": 1}
    assert sum(s["age_groups"].values()) == n and s["age_groups"]["unknown"] == 1
    assert s["age_histogram"]["30-39"] == 5 and s["age_histogram"]["unknown"] == 1
    assert s["image_modes"]["CMYK"] == 1 and s["image_modes"]["I;16"] == 1
    assert len(s["conflict_examples"]) == 2


def test_audit_parallel_matches_serial(odd_dataset: ReadResult):
    big = ReadResult(
        pd.concat([odd_dataset.table] * 6, ignore_index=True), odd_dataset.problems, "test"
    )  # 84 rows: above the serial cut-off, every file six times
    serial = audit_dataset(big, workers=1, progress=False)
    parallel = audit_dataset(big, workers=2, progress=False)
    assert parallel.group_id.tolist() == serial.group_id.tolist()
    assert parallel.files.equals(serial.files)
    s = parallel.to_dict()
    assert s["exact_duplicate_files"] == 84  # every row now has byte-identical copies
    assert s["exact_duplicate_groups"] == 11  # the distinct file contents
    assert s["near_duplicate_groups"] == 1 and s["unreadable"] == 18


def test_audit_of_empty_table():
    report = audit_dataset(ReadResult(make_table([]), [], "t"), progress=False)
    assert report.to_dict()["images"] == 0 and len(report.group_id) == 0


def test_print_report_mentions_the_counts(odd_dataset: ReadResult):
    from rich.console import Console

    report = audit_dataset(odd_dataset, workers=1, progress=False)
    console = Console(record=True, width=120)
    print_report(report, console)
    text = console.export_text()
    assert "byte-identical groups" in text and "truncated.jpg" in text and "a_copy2.jpg" in text


def test_parallel_map_keeps_order():
    out = parallel_map(abs, list(range(-150, 0)), workers=2, chunk_size=16, progress=False)
    assert out == list(range(150, 0, -1))


# ------------------------------------------------------------------ across datasets
def _table(paths: list[str], genders: list[int], ages: list[float]) -> pd.DataFrame:
    rows = [dict(path=p, gender=g, age=a, subject="", source="t") for p, g, a in
            zip(paths, genders, ages, strict=True)]  # fmt: skip
    return make_table(rows)


def test_link_datasets_joins_copies_across_datasets():
    """Exact copies (same digest) and near copies (matching framed thumbnails) join two
    datasets' groups; a look-alike does not; each dataset's own groups are kept."""
    from agegender.data.audit import link_datasets

    a = [face_like(1), face_like(2), face_like(7).rotate(90)]
    b = [a[0].filter(ImageFilter.GaussianBlur(1.5)), face_like(3), face_like(9).rotate(90)]
    thumbs = np.stack([thumb(im) for im in a + b])
    ta = _table(["a0", "a1", "a2"], [0, 0, 0], [30, 40, 50])
    tb = _table(["b0", "b1", "b2"], [1, 1, 0], [33, 40, 20])
    links = link_datasets(
        [ta, tb],
        ["A", "B"],
        groups=[np.array([0, 1, 1]), None],  # a1 and a2 are one group of A's own audit
        sha1=[np.array(["x", "y", "z"], object), np.array(["", "", "z"], object)],
        thumbs=thumbs,
        found=np.array([True] * 6),
    )
    gid = links.group_id
    assert gid[0] == gid[3]  # a0 ~ b0: near (blurred), across
    assert gid[1] == gid[2] == gid[5]  # A's own group, then b2 = a2's bytes
    assert gid[4] not in (gid[0], gid[1])  # b1 looks like a1 but is another photo
    assert links.dataset.tolist() == [0, 0, 0, 1, 1, 1]
    assert links.cross_groups().tolist() == [True, True, True, True, False, True]
    s = links.summary
    json.dumps(s)
    assert s["cross_dataset_groups"] == 2 and s["cross_dataset_files"] == 5
    assert s["cross_dataset_pairs"] == {"exact": 1, "near": 1}
    assert s["dataset_pairs"] == {"A + B": 2}
    assert s["datasets"]["B"] == {"rows": 3, "faces_framed": 3, "in_cross_groups": 2}
    assert s["cross_gender_conflict_groups"] == 1  # a0 male, b0 female
    assert s["cross_age_gap_years"]["groups"] == 2
    assert s["cross_age_gap_years"]["max"] == 25  # median of A's (40, 50) vs b2's 20
    near = links.pairs[links.pairs["kind"] == "near"].iloc[0]
    assert (near["i"], near["j"]) == (0, 3) and near["grad_corr"] >= 0.8
    # without a face found for b0, only the exact copy is left
    found = np.array([True, True, True, False, True, True])
    alone = link_datasets([ta, tb], ["A", "B"], thumbs=thumbs, found=found)
    assert alone.summary["cross_dataset_groups"] == 0


# ------------------------------------------------------------------ CLI
def _utk_dataset(root: Path) -> Path:
    root.mkdir()
    for k in range(4):
        face_like(10 + k).save(root / f"{20 + k}_{k % 2}_0_2017010100000{k}.jpg.chip.jpg")
    (root / "25_1_0_20170101000009.jpg.chip.jpg").write_bytes(b"junk")
    (root / "nolabel.jpg").write_bytes(jpeg_bytes(face_like(1)))
    return root


def test_cli_audit_json_prints_one_json_object(tmp_path: Path):
    root = _utk_dataset(tmp_path / "utk")
    res = CliRunner().invoke(app, ["data", "audit", str(root), "--json", "--workers", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # nothing else on stdout
    assert data["format"] == "utkface"
    assert data["rows"] == 5 and data["images"] == 6 and data["unreadable"] == 1
    assert data["label_errors"] == 1


def test_cli_audit_human_and_errors(tmp_path: Path):
    root = _utk_dataset(tmp_path / "utk")
    res = CliRunner().invoke(app, ["data", "audit", str(root)])
    assert res.exit_code == 0 and "dataset audit" in res.stdout
    res = CliRunner().invoke(app, ["data", "audit", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope" in res.stderr and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["data", "audit", str(tmp_path / "empty"), "--json"])
    assert res.exit_code == 2 and res.stdout == ""


# ------------------------------------------------------------------ real data
@pytest.mark.realdata
def test_utkface_exact_duplicates_by_bytes(utkface_dir: Path):
    """The documented ~375 byte-identical groups (765 files), hashed in parallel."""
    from agegender.data.readers import read_dataset

    result = read_dataset(utkface_dir)
    digests = parallel_map(_sha1, result.table["path"].tolist(), progress=False)
    counts = pd.Series(digests).value_counts()
    assert abs(int((counts >= 2).sum()) - 375) <= 5
    assert abs(int(counts[counts >= 2].sum()) - 765) <= 10


def _sha1(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@pytest.mark.realdata
@pytest.mark.slow
def test_utkface_full_audit(utkface_dir: Path):
    """The whole audit on 23.7k real images: duplicates, near duplicates, conflicts."""
    from agegender.data.readers import read_dataset

    result = read_dataset(utkface_dir)
    start = time.perf_counter()
    report = audit_dataset(result, progress=False)
    seconds = time.perf_counter() - start
    s = report.to_dict()
    print(f"utkface audit: {seconds:.1f} s", {k: s[k] for k in list(s)[:20]})
    assert s["readable"] == len(result.table) >= 23_700
    assert abs(s["exact_duplicate_groups"] - 375) <= 5
    assert abs(s["exact_duplicate_files"] - 765) <= 10
    assert 450 <= s["near_duplicate_groups"] <= 800  # several hundred re-encoded / blurred
    assert s["label_conflict_groups"] >= 100
    # no group may be a chain of look-alikes: real copies come in small groups
    assert report.group_id.value_counts().max() <= 12
    assert seconds < 180
