"use strict";
const $ = (id) => document.getElementById(id);
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"];

function setStatus(text, state) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = state;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function label(face) {
  const parts = [];
  if (face.gender) parts.push(face.gender + " " + Math.round(100 * Math.max(face.p_female, face.p_male)) + "%");
  if (face.age !== null && face.age !== undefined) parts.push("age " + face.age.toFixed(0) + (face.age_group ? " (" + face.age_group + ")" : ""));
  return "#" + face.face_index + " " + parts.join(", ");
}

async function draw(file, result) {
  const fig = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.className = "result-canvas";
  canvas.dataset.source = result.source;
  canvas.dataset.faces = String(result.faces.length);
  const cap = document.createElement("figcaption");
  cap.textContent = result.source + ": " + (result.error ? result.error : result.faces.length + " face(s)");
  fig.appendChild(canvas);
  fig.appendChild(cap);
  $("figures").appendChild(fig);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    canvas.width = 320; canvas.height = 40;
    const ctx = canvas.getContext("2d");
    ctx.fillText("(this browser cannot display the image)", 8, 24);
    return;
  }
  // boxes are in the server's (EXIF-rotated) pixel coordinates
  const w = result.width || bitmap.width, h = result.height || bitmap.height;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, w, h);
  const lw = Math.max(2, Math.round(Math.max(w, h) / 250));
  ctx.lineWidth = lw;
  ctx.font = Math.max(12, Math.round(Math.max(w, h) / 40)) + "px sans-serif";
  ctx.textBaseline = "bottom";
  result.faces.forEach((face, i) => {
    const [x, y, bw, bh] = face.box;
    const color = COLORS[i % COLORS.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, bw, bh);
    const text = label(face);
    const tw = ctx.measureText(text).width + 8;
    const th = parseInt(ctx.font, 10) + 6;
    const ty = y - th < 0 ? y + bh + th : y;
    ctx.fillStyle = color;
    ctx.fillRect(x - lw / 2, ty - th, tw, th);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x + 4, ty - 3);
  });
}

function addRows(result) {
  const body = $("results").querySelector("tbody");
  if (!result.faces.length) {
    const row = document.createElement("tr");
    cell(row, result.source);
    for (let i = 0; i < 8; i++) cell(row, "");
    cell(row, result.error || "", "err");
    body.appendChild(row);
    return;
  }
  for (const f of result.faces) {
    const row = document.createElement("tr");
    row.className = "face";
    cell(row, result.source);
    cell(row, String(f.face_index));
    const td = document.createElement("td");
    if (f.crop) {
      const img = document.createElement("img");
      img.src = f.crop; img.className = "crop"; img.alt = "face " + f.face_index + " as the model saw it";
      img.width = 64; img.height = 64;
      td.appendChild(img);
    }
    row.appendChild(td);
    cell(row, f.gender || "");
    cell(row, f.p_female === null ? "" : f.p_female.toFixed(3));
    cell(row, f.age === null ? "" : f.age.toFixed(1));
    cell(row, f.age_group || "");
    cell(row, f.box.join(", "));
    cell(row, f.detector_score.toFixed(2));
    cell(row, "");
    body.appendChild(row);
  }
}

// The API token, if the server wants one: kept for this tab only (sessionStorage).
const TOKEN_KEY = "agegender-token";
const tokenInput = $("token");
try { tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { /* storage off */ }
tokenInput.addEventListener("input", () => {
  try { sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim()); } catch (e) { /* storage off */ }
});

function authHeaders() {
  const token = tokenInput.value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function upload(files) {
  if (!files.length) return;
  $("error").textContent = "";
  $("figures").innerHTML = "";
  $("results").querySelector("tbody").innerHTML = "";
  $("results").hidden = true;
  setStatus("uploading " + files.length + " image(s)...", "busy");
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  let resp, body;
  try {
    resp = await fetch("v1/predict?crops=1", { method: "POST", body: form, headers: authHeaders() });
    body = await resp.json();
  } catch (e) {
    setStatus("failed", "error");
    $("error").textContent = "request failed: " + e;
    return;
  }
  if (!resp.ok) {
    setStatus("failed (" + resp.status + ")", "error");
    $("error").textContent = body.error + (body.detail ? "\n" + JSON.stringify(body.detail) : "");
    if (resp.status === 401) {
      $("error").textContent += "\nThis server needs an API token: enter it above.";
      tokenInput.focus();
    }
    return;
  }
  for (let i = 0; i < body.results.length; i++) {
    await draw(files[i], body.results[i]);
    addRows(body.results[i]);
  }
  $("results").hidden = false;
  const nfaces = body.results.reduce((n, r) => n + r.faces.length, 0);
  setStatus("done: " + nfaces + " face(s) in " + body.results.length + " image(s), " +
            body.elapsed_ms.toFixed(0) + " ms (model " + body.model + ")", "done");
}

$("files").addEventListener("change", (e) => upload(Array.from(e.target.files)));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  upload(Array.from(e.dataTransfer.files));
});
