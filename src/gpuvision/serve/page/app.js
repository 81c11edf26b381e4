// The page's behaviour: the upload API, feedback and the monitor route of this same server. No framework, no
// build step; server text is only ever set as textContent.
"use strict";

const KEY = "gpuvision-api-key";  // sessionStorage: this tab only
const TOP_K = 3;
const CHUNK = 16;  // images per request
const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
let models = [], timer = null;

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function status(text) { $("status").textContent = text; }

class NeedsKey extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", "Bearer " + key);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    askKey(key ? "That key was refused; enter the server's API key" : null);
    throw new NeedsKey();
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function askKey(message) {
  $("classify").hidden = $("monitor").hidden = true;
  $("key-form").hidden = false;
  if (message) status(message); else status("This server needs an API key.");
  $("key").focus();
}

function model() { return models.find((m) => m.name === $("model").value); }

async function start() {
  try {
    models = (await api("/models")).models;
  } catch (e) {
    if (!(e instanceof NeedsKey)) status("Cannot list the models: " + e.message);
    return;
  }
  $("key-form").hidden = true;
  const select = $("model");
  select.replaceChildren(...models.map((m) => el("option", `${m.name} (version ${m.version})`, { value: m.name })));
  $("classify").hidden = false;
  status(`${models.length} model${models.length === 1 ? "" : "s"} served.`);
  showMonitor();
}

async function classify(files) {
  const m = model();
  if (!m || !files.length) return;
  status(`Classifying ${files.length} image${files.length === 1 ? "" : "s"}…`);
  for (let i = 0; i < files.length; i += CHUNK) {
    const part = files.slice(i, i + CHUNK);
    const form = new FormData();
    for (const file of part) form.append("file", file, file.name);
    let answer;
    try {
      answer = await api(`/models/${encodeURIComponent(m.name)}/predict?top_k=${TOP_K}`, { method: "POST", body: form });
    } catch (e) {
      if (!(e instanceof NeedsKey)) status("Classification failed: " + e.message);
      return;
    }
    $("results").prepend(...answer.predictions.map((p, j) => result(m, p, part[j])));  // newest first, in order
  }
  status("Done. Give the true label where you know it.");
  refreshMonitor();
}

function result(m, prediction, file) {
  const item = el("li", null, { class: "prediction" });
  const image = el("img", null, { alt: prediction.image, src: URL.createObjectURL(file) });
  const body = el("div");
  const best = prediction.top[0];
  const top = el("p", null, { class: "top" });
  top.append(el("strong", best.class, { "data-top": "" }), ` ${(100 * best.probability).toFixed(1)}%`);
  const probs = el("ul", null, { class: "probs", "aria-label": "top classes" });
  for (const t of prediction.top) {
    const row = el("li");
    row.append(el("span", t.class), el("meter", null, { min: "0", max: "1", value: String(t.probability) }),
      el("span", `${(100 * t.probability).toFixed(1)}%`));
    probs.append(row);
  }
  body.append(el("p", prediction.image, { class: "name" }), top, probs, feedback(m, prediction));
  item.append(image, body);
  return item;
}

function feedback(m, prediction) {
  const group = el("div", null, { class: "feedback", role: "group", "aria-label": `True label of ${prediction.image}` });
  const said = el("p", null, { role: "status" });
  const controls = [];
  const send = async (label) => {
    controls.forEach((c) => { c.disabled = true; });
    try {
      const r = await api(`/models/${encodeURIComponent(m.name)}/feedback`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id: prediction.id, label }),
      });
      said.textContent = r.correct ? `Thanks: ${label}, as predicted.` : `Thanks: ${label} (predicted ${r.predicted}).`;
      refreshMonitor();
    } catch (e) {
      if (!(e instanceof NeedsKey)) said.textContent = "Feedback failed: " + e.message;
      controls.forEach((c) => { c.disabled = false; });
    }
  };
  group.append(el("span", "True label:"));
  for (const t of prediction.top) {
    const button = el("button", t.class, { type: "button", "data-label": t.class });
    button.addEventListener("click", () => send(t.class));
    controls.push(button);
    group.append(button);
  }
  const others = el("select", null, { "aria-label": "another class" });
  others.append(el("option", "another class…", { value: "" }), ...m.classes.map((c) => el("option", c, { value: c })));
  const other = el("button", "Send", { type: "button" });
  other.addEventListener("click", () => { if (others.value) send(others.value); });
  controls.push(others, other);
  group.append(others, other);
  const wrap = el("div");
  wrap.append(group, said);
  return wrap;
}

// ------------------------------------------------------------------------------------------ the monitor panel
const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");

function showMonitor() {
  clearInterval(timer);
  const m = model();
  $("monitor").hidden = !(m && m.monitored);
  if (m && m.monitored) {
    refreshMonitor();
    timer = setInterval(refreshMonitor, REFRESH_MS);
  }
}

async function refreshMonitor() {
  const m = model();
  if (!m || !m.monitored) return;
  let r;
  try {
    r = await api(`/models/${encodeURIComponent(m.name)}/monitor`);
  } catch (e) {
    if (!(e instanceof NeedsKey)) $("notes").replaceChildren(el("li", "Monitor unavailable: " + e.message));
    return;
  }
  const a = r.accuracy, d = r.drift, s = r.serving;
  const psi = (x) => [x.psi === null || x.state === "too few" ? x.state : `${fmt(x.psi)} (${x.state})`, x.state];
  const rows = [
    ["requests", "Requests", String(s.requests)],
    ["labelled", "Labelled predictions", String(a.labelled)],
    ["accuracy", "Live accuracy (n) / test", `${pct(a.live)} (${a.labelled}) / ${pct(a.test)}`],
    ["verdict", "Verdict (p-value)", `${a.verdict} (p = ${a.p_value === null ? "–" : a.p_value.toPrecision(3)})`,
      a.verdict],
    ["confidence", "Confidence drift (PSI)", ...psi(d.confidence)],
    ["brightness", "Brightness drift (PSI)", ...psi(d.brightness)],
    ["classes", "Predicted classes (PSI)", ...psi(d.classes)],
    ["recent", "Recent predictions", String(d.recent)],
    ["batch", "Mean batch", fmt(s.mean_batch, 2)],
    ["latency", "Latency p50 / p99", `${fmt(s.latency_ms.p50, 1)} / ${fmt(s.latency_ms.p99, 1)} ms`],
  ];
  const figures = [];
  for (const [field, name, value, state] of rows) {
    figures.push(el("dt", name), el("dd", value, { "data-field": field, class: (state || "").replace(" ", "-") }));
  }
  $("figures").replaceChildren(...figures);
  $("notes").replaceChildren(...r.notes.map((n) => el("li", n)));
}

// ------------------------------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    start();
  });
  $("model").addEventListener("change", showMonitor);
  $("files").addEventListener("change", (event) => {
    classify([...event.target.files]);
    event.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify([...event.dataTransfer.files].filter((f) => /^image\/(png|jpeg)$/.test(f.type)));
  });
  start();
});
