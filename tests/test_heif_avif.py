"""HEIC/HEIF (iPhone photos) and AVIF read like JPEG: paths, bytes, folders, lists, the CLI
and the service, with the bundled default model; unreadable ones get their one-line reason.

Every HEIC/AVIF file is made here from the real face photos in ``examples/`` (pillow-heif
encodes HEIF, Pillow encodes AVIF), so nothing beyond the repository is needed.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from agegender import Predictor
from agegender.cli import app
from agegender.data.imageio import (
    AVIF_SUPPORT,
    HEIF_SUPPORT,
    ImageError,
    heif_kind,
    load_rgb,
    open_image,
)
from agegender.infer.inputs import collect_image_paths

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PHOTOS = ("woman_30-39.jpg", "man_40-49.jpg")  # clear faces, clear genders

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not HEIF_SUPPORT, reason="pillow-heif is not installed"),
    pytest.mark.skipif(not AVIF_SUPPORT, reason="this Pillow has no AVIF support"),
]

# Lossy but good: the decoded pixels differ from the JPEG's by well under one level on
# average, so the prediction may move a little (the tolerances below), never the face.
HEIC_OPTS = {"format": "HEIF", "quality": 95, "chroma": 444}
AVIF_OPTS = {"format": "AVIF", "quality": 95, "subsampling": "4:4:4"}
# Lossless HEIF in RGB (no YUV matrix): the very pixels of the JPEG.
LOSSLESS_HEIC_OPTS = {"format": "HEIF", "quality": -1, "chroma": 444, "matrix_coefficients": 0}


def encode(img: Image.Image, **opts) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **opts)
    return buf.getvalue()


def rgb(name: str) -> Image.Image:
    with Image.open(EXAMPLES / name) as img:
        return img.convert("RGB")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(threads=1, workers=1)  # the bundled default model, BlazeFace


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Files that cannot be read, by name, and what makes them so."""
    heic = encode(rgb(PHOTOS[0]), **HEIC_OPTS)
    avif = encode(rgb(PHOTOS[0]), **AVIF_OPTS)
    return {
        "empty.heic": b"",
        "notes.heic": b"this is a text file with a .heic name\n",
        "truncated.heic": heic[: len(heic) // 2],  # the header is whole, the pixels are not
        "header_cut.heic": heic[:300],  # cut inside the header
        "truncated.avif": avif[: len(avif) // 2],
    }


def test_heif_kind_reads_the_ftyp_brand() -> None:
    img = Image.new("RGB", (16, 16), (90, 120, 150))
    assert heif_kind(encode(img, **HEIC_OPTS)[:64]) == "HEIC"
    assert heif_kind(encode(img, **AVIF_OPTS)[:64]) == "AVIF"
    assert heif_kind(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1miaf") == "HEIF"
    assert heif_kind(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp41") is None  # MP4
    assert heif_kind(encode(img, format="JPEG")[:64]) is None
    assert heif_kind(b"") is None


def _close(face, ref, *, age_years: float = 2.5, p: float = 0.05, px: int = 4) -> None:
    assert face.gender == ref.gender
    assert abs(face.p_female - ref.p_female) <= p, (face.p_female, ref.p_female)
    assert abs(face.age - ref.age) <= age_years, (face.age, ref.age)
    assert all(abs(a - b) <= px for a, b in zip(face.box, ref.box, strict=True)), (
        face.box,
        ref.box,
    )


@pytest.mark.parametrize("name", PHOTOS)
def test_heic_and_avif_predict_like_the_jpeg(
    predictor: Predictor, name: str, tmp_path: Path
) -> None:
    img = rgb(name)
    jpeg = EXAMPLES / name
    ref = predictor.predict(jpeg)
    assert ref.error is None and len(ref.faces) == 1, ref.error
    heic, avif = tmp_path / "photo.heic", tmp_path / "photo.avif"
    heic.write_bytes(encode(img, **HEIC_OPTS))
    avif.write_bytes(encode(img, **AVIF_OPTS))
    for item in (heic, avif, str(heic), heic.read_bytes(), bytearray(avif.read_bytes())):
        pixels = load_rgb(bytes(item) if isinstance(item, bytearray) else item)
        assert pixels.shape == (*img.size[::-1], 3)
        assert np.abs(pixels.astype(int) - np.asarray(img, dtype=int)).mean() < 1.0
        res = predictor.predict(item)
        assert res.error is None and len(res.faces) == 1, res.error
        assert (res.width, res.height) == (ref.width, ref.height)
        _close(res.faces[0], ref.faces[0])
    # a list of them in one call: one result each, in order
    results = predictor.predict([jpeg, heic, avif])
    assert [r.source for r in results] == [str(jpeg), str(heic), str(avif)]
    assert all(len(r.faces) == 1 for r in results)


def test_lossless_heic_is_the_jpeg_exactly(predictor: Predictor) -> None:
    img = rgb(PHOTOS[0])
    data = encode(img, **LOSSLESS_HEIC_OPTS)
    assert np.array_equal(load_rgb(data), np.asarray(img))
    ref, res = predictor.predict(EXAMPLES / PHOTOS[0]), predictor.predict(data)
    assert res.faces[0].box == ref.faces[0].box
    assert res.faces[0].p_female == pytest.approx(ref.faces[0].p_female, abs=1e-6)
    assert res.faces[0].age == pytest.approx(ref.faces[0].age, abs=1e-4)


def test_exif_orientation_is_kept(predictor: Predictor, tmp_path: Path) -> None:
    """Pixels stored turned, the file saying how to turn them back (as an iPhone held
    upright saves them): seen upright, like the upright photo."""
    upright = rgb(PHOTOS[0]).crop((0, 0, 448, 360))  # not square: a turn changes the size
    ref = predictor.predict(np.asarray(upright))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 360 x 448
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    lossless = {k: v for k, v in LOSSLESS_HEIC_OPTS.items() if k != "format"}
    for fmt, opts in (("HEIF", lossless), ("AVIF", {"quality": 95, "subsampling": "4:4:4"})):
        data = encode(stored, format=fmt, exif=exif.tobytes(), **opts)
        assert Image.open(io.BytesIO(data)).format == fmt
        pixels = load_rgb(data)
        assert pixels.shape == (360, 448, 3), fmt
        assert np.abs(pixels.astype(int) - np.asarray(upright, dtype=int)).mean() < 1.0, fmt
        res = predictor.predict(data)
        assert (res.width, res.height) == (448, 360), fmt
        assert len(res.faces) == 1, (fmt, res.error)
        _close(res.faces[0], ref.faces[0])


def test_broken_files_each_get_their_one_line_reason(broken: dict[str, bytes]) -> None:
    expected = {
        "empty.heic": "not an image: empty file (0 bytes)",
        "notes.heic": "not an image (cannot identify image file)",
        "truncated.heic": "corrupt or truncated HEIC image: ",
        "header_cut.heic": "corrupt or truncated HEIC image (cannot read its header)",
        "truncated.avif": "corrupt or truncated AVIF image",
    }
    for name, data in broken.items():
        with pytest.raises(ImageError) as info:
            open_image(data)
        msg = str(info.value)
        assert msg.startswith(expected[name]) and "\n" not in msg, (name, msg)


def _heic_folder(root: Path, broken: dict[str, bytes]) -> Path:
    folder = root / "phone"
    (folder / "sub").mkdir(parents=True)
    woman, man = rgb(PHOTOS[0]), rgb(PHOTOS[1])
    (folder / "woman.jpg").write_bytes((EXAMPLES / PHOTOS[0]).read_bytes())
    (folder / "IMG_0001.HEIC").write_bytes(encode(woman, **HEIC_OPTS))
    (folder / "sub" / "man.heif").write_bytes(encode(man, **HEIC_OPTS))
    (folder / "man.avif").write_bytes(encode(man, **AVIF_OPTS))
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    return folder


def test_folder_and_list_give_every_file_its_row(broken: dict[str, bytes], tmp_path: Path) -> None:
    folder = _heic_folder(tmp_path, broken)
    found = {Path(p).relative_to(folder).as_posix() for p in collect_image_paths([folder])}
    assert found == {"woman.jpg", "IMG_0001.HEIC", "sub/man.heif", "man.avif", *broken}
    listed = {
        "listed_man.heic": (PHOTOS[1], HEIC_OPTS),
        "listed_woman.avif": (PHOTOS[0], AVIF_OPTS),
    }
    for name, (photo, opts) in listed.items():
        (tmp_path / name).write_bytes(encode(rgb(photo), **opts))
    listing = tmp_path / "list.txt"
    listing.write_text("listed_man.heic\nlisted_woman.avif\n")  # relative to the list
    out = tmp_path / "faces.csv"
    res = CliRunner().invoke(
        app,
        ["predict", str(folder), str(listing), "--out", str(out), "--threads", "1"]
        + ["--workers", "1", "--annotate", str(tmp_path / "annotated")],
    )
    assert res.exit_code == 1, res.output  # some inputs could not be read, the rest written
    rows = list(csv.DictReader(out.open()))
    by_path: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    assert len(by_path) == len(rows) == len(found) + len(listed)  # one row each (one face)
    errors = {Path(p).name: r[0]["error"] for p, r in by_path.items() if r[0]["error"]}
    assert set(errors) == set(broken)
    assert errors["empty.heic"] == "not an image: empty file (0 bytes)"
    assert errors["notes.heic"] == "not an image (cannot identify image file)"
    assert errors["truncated.heic"].startswith("corrupt or truncated HEIC image: ")
    assert errors["header_cut.heic"].startswith("corrupt or truncated HEIC image")
    assert errors["truncated.avif"].startswith("corrupt or truncated AVIF image")
    gender = {Path(p).name: r[0]["gender"] for p, r in by_path.items() if not r[0]["error"]}
    assert gender == {
        "woman.jpg": "female",
        "IMG_0001.HEIC": "female",
        "man.heif": "male",
        "man.avif": "male",
        "listed_man.heic": "male",
        "listed_woman.avif": "female",
    }
    assert len(list((tmp_path / "annotated").glob("*.jpg"))) == 6


def test_without_pillow_heif_a_heic_says_what_to_install(tmp_path: Path) -> None:
    heic = tmp_path / "woman.heic"
    heic.write_bytes(encode(rgb(PHOTOS[0]), **HEIC_OPTS))
    avif = tmp_path / "woman.avif"
    avif.write_bytes(encode(rgb(PHOTOS[0]), **AVIF_OPTS))
    script = f"""
import sys
sys.modules["pillow_heif"] = None  # as if it were not installed
from agegender.data.imageio import HEIF_SUPPORT, ImageError, open_image
from agegender.infer.inputs import one_line, to_rgb_array
assert not HEIF_SUPPORT
try:
    to_rgb_array({str(heic)!r})
except ImageError as exc:
    print(one_line(exc))
print(open_image({str(avif)!r}).size)  # AVIF is Pillow's own
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out == ["HEIC needs pillow-heif: pip install pillow-heif", "(448, 448)"]


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[str]:
    from agegender.serve import ServeSettings, create_app
    from test_serve import LiveServer

    live = LiveServer(create_app(predictor, ServeSettings(timeout_s=60)))
    yield live.url
    live.stop()


def test_service_takes_heic_and_avif_uploads(
    predictor: Predictor, server: str, broken: dict[str, bytes]
) -> None:
    woman, man = rgb(PHOTOS[0]), rgb(PHOTOS[1])
    heic, avif = encode(woman, **HEIC_OPTS), encode(man, **AVIF_OPTS)
    refs = [predictor.predict(EXAMPLES / n).faces[0] for n in PHOTOS]
    with httpx.Client(base_url=server, timeout=60) as client:
        page = client.get("/").text
        accept = page.split('id="files"', 1)[1].split('accept="', 1)[1].split('"', 1)[0]
        assert {"image/heic", "image/heif", "image/avif", ".heic", ".heif", ".avif"} <= set(
            accept.split(",")
        )
        files = [
            ("files", ("IMG_0001.HEIC", heic, "image/heic")),
            ("files", ("man.avif", avif, "image/avif")),
            ("files", ("sniffed.heic", heic, "application/octet-stream")),  # as some browsers
            ("files", ("notes.heic", broken["notes.heic"], "image/heic")),
        ]
        r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["source"] for x in results] == [f[1][0] for f in files]
    for res, ref in zip(results[:3], [refs[0], refs[1], refs[0]], strict=True):
        assert res["error"] is None and len(res["faces"]) == 1, res
        face = res["faces"][0]
        assert face["gender"] == ref.gender and abs(face["age"] - ref.age) <= 2.5
        assert abs(face["p_female"] - ref.p_female) <= 0.05
    assert results[3]["faces"] == []
    assert results[3]["error"] == "not an image (cannot identify image file)"
