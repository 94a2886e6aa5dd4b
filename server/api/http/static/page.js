// The page at /: pick a served model, give it images, see each image's top classes.
// Plain JavaScript against the server's own JSON API (/v1/models, /v1/models/{m}:classify);
// every image is its own request, so one file the server cannot read spoils no other.
"use strict";

const $ = (id) => document.getElementById(id);
const shown = [];  // {file, item, url} of every image on the page, in order

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function errorOf(response) {
  // The server answers every error as {"error": "<message>"}; a proxy may not.
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (e) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`.trim();
}

function percent(p) {
  return `${(p * 100).toFixed(1)}%`;
}

// Under twice what guessing one of ten classes scores, a model has learnt next to nothing
// (model_contract.NEAR_CHANCE; the client's --list and the report mark the same models).
const NEAR_CHANCE = 0.2;

function nearChance(m) {
  return m.test_accuracy < NEAR_CHANCE;
}

function describeModel(m) {
  const provider = m.provider.replace("ExecutionProvider", "");
  const variant = m.variant ? ` ${m.variant}` : "";
  const mark = nearChance(m) ? " (near chance)" : "";
  return `${m.name} v${m.version}${variant} · ${provider} · ${percent(m.test_accuracy)} accuracy${mark}`;
}

// The lower end of the 95% Wilson score interval of a test accuracy: a figure measured on few
// test images counts for less (client/models.py explains the choice; both pick the same model).
function accuracyLowerBound(m) {
  const n = Number(m.test_images), p = m.test_accuracy, z = 1.96;
  if (!(n > 0)) return 0;
  const spread = z * Math.sqrt(p * (1 - p) / n + z * z / (4 * n * n));
  return (p + z * z / (2 * n) - spread) / (1 + z * z / n);
}

// The model the client answers with when no --model is given: fp32 first, then by the accuracy
// it can be sure of, then by name, the newest version.
function defaultModel(models) {
  const fp32 = models.filter((m) => !m.variant);
  const order = (a, b) => accuracyLowerBound(b) - accuracyLowerBound(a) ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) || b.version - a.version;
  return [...(fp32.length ? fp32 : models)].sort(order)[0];
}

async function loadModels() {
  setStatus("Loading the served models…");
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (e) {
    setStatus(`The server cannot be reached (${e.message}).`, true);
    return;
  }
  if (!response.ok) {
    if (response.status === 401) $("token-box").open = true;
    setStatus(`Cannot list the models: ${await errorOf(response)}`, true);
    return;
  }
  const body = await response.json();
  fillModels(body.models);
  if (body.image_formats) $("formats").textContent = formatList(body.image_formats);
  const notReady = await readiness();
  if (notReady) {
    setStatus(`${body.models.length} model version(s) listed; ${notReady}`, true);
    return;
  }
  setStatus(body.models.length ? `${body.models.length} model version(s) served.`
                               : "The server serves no model yet.", !body.models.length);
}

// What /v2/health/ready says when the server is not ready (null when it is): the readiness
// gRPC health, KServe ServerReady and load balancers read, so the page never tells another story.
async function readiness() {
  try {
    const response = await fetch("/v2/health/ready", { headers: authHeaders() });
    return response.ok ? null : await errorOf(response);
  } catch (e) {
    return `the server cannot be reached (${e.message})`;
  }
}

function formatList(formats) {
  const names = formats.map((f) => (f === "WEBP" ? "WebP" : f));
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names.at(-1)}` : names[0];
}

function fillModels(models) {
  const select = $("model");
  const before = select.value;
  select.replaceChildren();
  const best = defaultModel(models);
  for (const m of models) {
    const option = new Option(describeModel(m), `${m.name}@${m.version}`);
    option.dataset.info = `Measured on ${Number(m.test_images).toLocaleString()} test images; ` +
      `runs on ${m.provider}; ${m.labels.length} classes.` +
      (nearChance(m) ? " Near chance: it has barely learnt, its answers are close to guesses." : "");
    select.add(option);
  }
  const keep = [...select.options].some((o) => o.value === before);
  if (keep) select.value = before;
  else if (best) select.value = `${best.name}@${best.version}`;
  showModelInfo();
}

function showModelInfo() {
  const option = $("model").selectedOptions[0];
  $("model-info").textContent = option ? option.dataset.info : "No model to choose.";
}

function topK() {
  const k = Number.parseInt($("top-k").value, 10);
  return Number.isFinite(k) ? Math.min(10, Math.max(1, k)) : 1;
}

function newItem(file, url) {
  const item = document.createElement("li");
  item.className = "result";
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = url;
  img.alt = `thumbnail of ${file.name}`;
  img.addEventListener("error", () => figure.classList.add("no-preview"));
  const caption = document.createElement("figcaption");
  caption.textContent = file.name;
  figure.append(img, caption);
  const answer = document.createElement("div");
  answer.className = "answer";
  item.append(figure, answer);
  return item;
}

async function classify(entry) {
  const { file, item } = entry;
  const answer = item.querySelector(".answer");
  const chosen = $("model").value;
  if (!chosen) {
    showError(answer, "no model is served to classify it with");
    return;
  }
  const at = chosen.lastIndexOf("@");
  const [name, version] = [chosen.slice(0, at), chosen.slice(at + 1)];
  item.dataset.state = "pending";
  answer.replaceChildren(paragraph("Classifying…", "pending"));
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("top_k", String(topK()));
  form.append("inversion", $("inversion").value);
  const url = `/v1/models/${encodeURIComponent(name)}/versions/${version}:classify`;
  const started = performance.now();
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
  } catch (e) {
    showError(answer, `the server cannot be reached (${e.message})`);
    return;
  }
  const elapsed = performance.now() - started;
  if (!response.ok) {
    showError(answer, `${await errorOf(response)} (HTTP ${response.status})`);
    return;
  }
  const body = await response.json();
  showAnswer(answer, body, elapsed, serverTime(response));
  item.dataset.state = "done";
}

function serverTime(response) {
  const match = /core;dur=([\d.]+)/.exec(response.headers.get("Server-Timing") || "");
  return match ? Number(match[1]) : null;
}

function paragraph(text, className) {
  const p = document.createElement("p");
  p.className = className;
  p.textContent = text;
  return p;
}

function showError(answer, message) {
  answer.closest(".result").dataset.state = "error";
  const p = paragraph(`Not classified: ${message}`, "error");
  p.setAttribute("role", "alert");
  answer.replaceChildren(p);
}

function showAnswer(answer, body, elapsed, serverMs) {
  const predictions = body.classifications[0].predictions;
  const top = predictions[0];
  const headline = paragraph("", "top");
  const label = document.createElement("strong");
  label.className = "label";
  label.textContent = top.label;
  headline.append(label, ` ${percent(top.probability)}`);
  const bars = document.createElement("ol");
  bars.className = "bars";
  bars.setAttribute("aria-label", "top classes");
  for (const p of predictions) bars.append(bar(p));
  const timing = serverMs === null ? "" : ` (server ${serverMs.toFixed(1)} ms)`;
  const meta = paragraph(`${body.model} v${body.version} answered in ${elapsed.toFixed(0)} ms` +
                         timing, "meta");
  answer.replaceChildren(headline, bars, meta);
}

function bar(prediction) {
  const row = document.createElement("li");
  row.dataset.label = prediction.label;
  row.dataset.probability = String(prediction.probability);
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = prediction.label;
  const track = document.createElement("span");
  track.className = "track";
  track.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = percent(prediction.probability);
  track.append(fill);
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = percent(prediction.probability);
  row.append(name, track, value);
  return row;
}

function addFiles(files) {
  if (!files.length) return;
  for (const file of files) {
    const url = URL.createObjectURL(file);
    const entry = { file, url, item: newItem(file, url) };
    shown.push(entry);
    $("results").append(entry.item);
    classify(entry);
  }
  setStatus(`${files.length} image(s) sent.`);
}

function classifyAgain() {
  for (const entry of shown) classify(entry);
}

function clearResults() {
  for (const entry of shown) URL.revokeObjectURL(entry.url);
  shown.length = 0;
  $("results").replaceChildren();
  setStatus("Results cleared.");
}

function pastedName(file, i) {
  // A pasted screenshot arrives as "image.png"; number them so the results can be told apart.
  return new File([file], `pasted-${i + 1}-${file.name || "image"}`, { type: file.type });
}

function wire() {
  const drop = $("drop");
  $("controls").addEventListener("submit", (e) => e.preventDefault());
  $("model").addEventListener("change", () => { showModelInfo(); classifyAgain(); });
  $("top-k").addEventListener("change", classifyAgain);
  $("inversion").addEventListener("change", classifyAgain);
  $("reload").addEventListener("click", loadModels);
  $("token").addEventListener("change", loadModels);
  $("clear").addEventListener("click", clearResults);
  $("files").addEventListener("change", (e) => {
    addFiles([...e.target.files]);
    e.target.value = "";  // choosing the same file again is a new choice
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles([...e.dataTransfer.files]);
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (!files.length) return;  // text pastes (the token) go where they were meant to
    e.preventDefault();
    addFiles(files.map(pastedName));
  });
}

wire();
loadModels();
