#!/usr/bin/env bash
# Packaging check: what a user installs is what we test.
# 1. the tracked tree stays light enough to carry (<= 60 MiB of committed files);
# 2. `python -m build` makes the sdist and the wheel; the wheel holds every file predict and
#    serve read (bundled weights and cards, BlazeFace models, the web page's files);
# 3. the wheel, installed into a fresh venv outside the clone (system site-packages for the
#    dependencies, nothing downloaded), is the agegender that venv imports, and
#    `agegender predict examples/` there writes exactly the rows the editable install does;
#    its service answers the page, its static files, /docs and a prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
start=$SECONDS
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

limit=$((60 * 1024 * 1024))
tracked=$(git ls-tree -r -l HEAD | awk '{s += $4} END {print s}')
echo "package check: tracked tree at HEAD $tracked bytes ($((tracked / 1048576)) MiB, limit 60 MiB)"
if ((tracked > limit)); then
  echo "package check: the tracked tree is over 60 MiB; the largest files:" >&2
  git ls-tree -r -l HEAD | sort -k4 -n -r | head -5 >&2
  exit 1
fi

python3 -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2
  exit 1
}
wheel=$(ls "$work"/dist/agegender-*.whl)
python3 - "$wheel" <<'EOF'
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = [
    *(f"agegender/infer/weights/{n}" for n in (
        "default.onnx", "default.pt", "accurate.onnx", "accurate.pt",
        "MODEL_CARD.md", "MODEL_CARD_accurate.md",
    )),
    "agegender/infer/blazeface_models/face_detection_short_range.tflite",
    "agegender/infer/blazeface_models/face_detection_full_range.tflite",
    "agegender/infer/blazeface_models/face_landmark.tflite",
    "agegender/infer/blazeface_models/NOTICE.md",
    *(f"agegender/serve/static/{n}" for n in ("index.html", "app.css", "app.js", "docs.js")),
]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"package check: the wheel lacks {', '.join(missing)}")
print(f"package check: wheel {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, all {len(need)} data files in it")
EOF

# --without-pip: no venv copy of pip and an old setuptools shadowing the system's (torch
# needs setuptools >= 77); the system's pip installs into the venv. --no-index: every
# dependency must already be satisfied (the system's), nothing downloaded.
python3 -m venv --system-site-packages --without-pip "$work/venv"
python3 -m pip --python "$work/venv/bin/python" install -q --no-index "$wheel"
cd "$work"  # outside the clone: nothing of it on the path
"$work/venv/bin/python" - "$work/venv" <<'EOF'
import sys

import agegender

where = agegender.__file__
if not where.startswith(sys.argv[1]):
    sys.exit(f"package check: the venv imports agegender from {where}, not the wheel")
print(f"package check: the venv's agegender is {where}")
EOF
"$work/venv/bin/agegender" predict "$repo/examples" --out "$work/wheel.csv" --threads 1
(cd "$repo" && python3 -m agegender predict "$repo/examples" --out "$work/editable.csv" --threads 1)
if ! cmp -s "$work/wheel.csv" "$work/editable.csv"; then
  echo "package check: the wheel's predict rows differ from the editable install's:" >&2
  diff "$work/editable.csv" "$work/wheel.csv" >&2 || true
  exit 1
fi
rows=$(($(wc -l <"$work/wheel.csv") - 1))
echo "package check: predict examples/: the same $rows rows from the wheel and the editable install"
"$work/venv/bin/python" - "$repo/examples/woman_30-39.jpg" <<'EOF'
import sys

from fastapi.testclient import TestClient

from agegender.serve.app import create_app

client = TestClient(create_app())
for route in ("/", "/static/app.css", "/static/app.js", "/static/docs.js", "/docs", "/healthz"):
    r = client.get(route)
    if r.status_code != 200 or not r.content:
        sys.exit(f"package check: the wheel's service answers {route} with {r.status_code}")
with open(sys.argv[1], "rb") as f:
    r = client.post("/v1/predict", files={"files": ("woman.jpg", f, "image/jpeg")})
body = r.json()
faces = [face for item in body.get("results", []) for face in item.get("faces", [])]
if r.status_code != 200 or len(faces) != 1 or faces[0]["gender"] != "female":
    sys.exit(f"package check: /v1/predict from the wheel: {r.status_code} {str(body)[:300]}")
print("package check: the wheel's service serves the page, its files, /docs and a prediction")
EOF
echo "package check: passed in $((SECONDS - start)) s"
