"""``agegender predict`` at a terminal: a table of faces, and the inputs without a result
listed under it with their reason (the table has no error column)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` (a pty) absent")
def test_terminal_table_lists_failures_under_it(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(REPO / "examples" / "man_40-49.jpg", folder / "man.jpg")
    (folder / "broken.jpg").write_text("not a jpeg")
    cmd = f"{sys.executable} -m agegender predict {folder} --threads 1"
    out = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=300
    ).stdout
    assert "man.jpg" in out and "detected" in out
    assert "without a result:" in out
    assert f"{folder / 'broken.jpg'}: not an image" in out
    assert "error column" not in out
    assert "2 images: 1 faces, 1 without a result (listed above; 1 could not be read)" in out
