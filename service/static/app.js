// glimpse page: plain JS, no build step, no CDN. Talks only to this origin's /v1 API.
"use strict";
const $ = (id) => document.getElementById(id);
const NUMBER_WORDS = { zero: "0", one: "1", two: "2", three: "3", four: "4", five: "5", six: "6", seven: "7",
  eight: "8", nine: "9" };
const state = { models: [], model: null, job: null, result: null, selected: 0, frames: [], attention: null,
  timer: null, source: null };

// Same rules as models/vocab.py: words (letters/digits with inner ' or -), every other symbol its own token.
function tokenize(text) {
  const re = /[\p{L}\p{N}]+(?:['-][\p{L}\p{N}]+)*|[^\p{L}\p{N}\s_]|_/gu;
  return [...text.matchAll(re)].map((m) => {
    const w = m[0].toLowerCase();
    return { text: NUMBER_WORDS[w] ?? w, raw: m[0], start: m.index, end: m.index + m[0].length };
  });
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text) node.textContent = text;
  return node;
}

function markCaption() {
  const box = $("marked");
  box.replaceChildren();
  const caption = $("caption").value;
  const vocab = state.model && state.model.vocabulary ? new Set(state.model.vocabulary) : null;
  if (!vocab || !caption.trim()) return [];
  const unknown = [];
  let at = 0;
  tokenize(caption).forEach((t, i) => {
    box.append(document.createTextNode(caption.slice(at, t.start)));
    const known = vocab.has(t.text);
    box.append(el("span", known ? {} : { class: "unknown", title: `unknown word at position ${i}` }, t.raw));
    if (!known) unknown.push(`“${t.raw}” (position ${i})`);
    at = t.end;
  });
  box.append(document.createTextNode(caption.slice(at)));
  if (unknown.length) box.append(el("div", { class: "unknown-list" }, `Not in the vocabulary: ${unknown.join(", ")}`));
  return unknown;
}

function showError(problem) {
  const box = $("error");
  let text = `${problem.title || "Error"}${problem.status ? ` (${problem.status})` : ""}: ${problem.detail || ""}`;
  const words = problem.unknown_words || problem.unknown || [];
  if (words.length) text += "\n" + words.map((u) => `• ${u.word} at position ${u.position}`).join("\n");
  box.textContent = text;
  box.hidden = false;
}

function fillList(list, captions) {
  list.replaceChildren(...captions.map((c) => {
    const li = el("li", {}, c);
    li.addEventListener("click", () => { $("caption").value = c; markCaption(); });
    return li;
  }));
}

// Caption-conditioned models have a vocabulary; DRAW draws unconditionally and the API refuses a caption for it.
function captioned() {
  return !!(state.model && state.model.vocabulary);
}

function chooseModel(id) {
  state.model = state.models.find((m) => m.id === id) || state.models[0] || null;
  const conditional = captioned();
  $("caption-field").hidden = !conditional;
  $("caption").required = conditional;
  $("marked").hidden = !conditional;
  $("example-lists").hidden = !conditional;
  $("unconditional").hidden = conditional;
  fillList($("examples"), state.model ? state.model.example_captions || [] : []);
  fillList($("heldout"), state.model ? state.model.held_out_captions || [] : []);
  markCaption();
}

async function loadModels() {
  const res = await fetch("/v1/models");
  if (!res.ok) return showError(await res.json().catch(() => ({ title: `HTTP ${res.status}` })));
  state.models = (await res.json()).models;
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.id }, `${m.id} (${m.kind})`)));
  const preferred = state.models.find((m) => m.default) || state.models[0];
  if (preferred) select.value = preferred.id;
  chooseModel(select.value);
}

function requestBody() {
  const body = { model: $("model").value, n: Number($("n").value) || 1 };
  if (captioned()) body.caption = $("caption").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function submit(event) {
  event.preventDefault();
  $("error").hidden = true;
  markCaption();
  const body = requestBody();
  $("curl").textContent = `curl -s -X POST ${location.origin}/v1/generations \\\n  -H 'Content-Type: application/json' \\\n` +
    `  -d '${JSON.stringify(body).replace(/'/g, "'\\''")}'`;
  const res = await fetch("/v1/generations", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({ title: `HTTP ${res.status}` }));
  if (!res.ok) return showError(data);
  startJob(data);
}

function startJob(job) {
  stopPlayer();
  if (state.source) state.source.close();
  Object.assign(state, { job, result: null, selected: 0, frames: [], attention: null });
  $("job").hidden = false;
  $("player").hidden = true;
  $("grid").replaceChildren();
  $("downloads").replaceChildren();
  $("bar").style.width = "0";
  $("frame").removeAttribute("src");
  clearOverlay();
  renderWords(null);
  if (job.seeds && job.seeds.length) { $("reuse").disabled = false; $("reuse").dataset.seed = job.seeds[0]; }
  $("status").textContent = job.queue_position ? `queued (${job.queue_position} ahead)` : "queued";
  const source = new EventSource(job.links.events);
  state.source = source;
  source.addEventListener("step", (e) => {
    const d = JSON.parse(e.data);
    $("bar").style.width = `${(100 * d.step) / d.steps}%`;
    $("status").textContent = `drawing: step ${d.step} of ${d.steps}`;
    if (d.frames.length) $("frame").src = d.frames[0];
    if (d.live) showLive(d.live);
  });
  source.addEventListener("done", (e) => { source.close(); finish(JSON.parse(e.data)); });
  for (const end of ["failed", "canceled", "expired"]) {
    source.addEventListener(end, (e) => {
      source.close();
      const d = JSON.parse(e.data);
      $("status").textContent = end;
      showError({ title: `Generation ${end}`, detail: d.error || "" });
    });
  }
}

function finish(result) {
  state.result = result;
  $("bar").style.width = "100%";
  $("status").textContent = `done: ${result.images} image(s), seeds ${result.seeds.join(", ")}`;
  $("grid").replaceChildren(...result.outputs.map((o, i) => {
    const img = el("img", { src: o.image, alt: `sample ${i}`, "data-index": i });
    img.addEventListener("click", () => select(i));
    return img;
  }));
  select(0);
}

async function select(i) {
  const out = state.result.outputs[i];
  state.selected = i;
  state.frames = out.frames.length ? out.frames : [out.image];  // one-step models (IWAE) keep no frames
  [...$("grid").children].forEach((img, j) => img.classList.toggle("selected", j === i));
  const dl = $("downloads");
  dl.replaceChildren(...[["PNG", out.image], ["GIF", out.animation_gif], ["WebP", out.animation_webp]]
    .filter(([, href]) => href).map(([name, href]) => el("a", { href, download: "" }, name)));
  state.attention = out.attention ? await (await fetch(out.attention)).json() : null;
  const scrub = $("scrub");
  scrub.max = String(state.frames.length);
  scrub.value = String(state.frames.length);
  $("player").hidden = false;
  show(state.frames.length);
}

function show(t) {
  $("frame").src = state.frames[t - 1];
  $("stepLabel").textContent = `step ${t} / ${state.frames.length}`;
  drawWindow(t);
  renderWords(t);
}

// While drawing: the first image's write window and word weights, straight from the step event.
function showLive(live) {
  drawBox(live.window);
  if (live.alignment) {
    const words = tokenize(state.job.captions?.[0] || "").map((t) => t.raw);
    renderWeights(words, live.alignment);
  }
}

function clearOverlay() {
  const c = $("overlay");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
}

function drawWindow(t) {
  const a = state.attention;
  drawBox(a && a.windows ? a.windows[t - 1] : null);
}

function drawBox(box) {
  clearOverlay();
  if (!box || !state.model) return;
  const [x0, y0, x1, y1] = box;
  const c = $("overlay");
  const sx = c.width / state.model.width;
  const sy = c.height / state.model.height;
  const ctx = c.getContext("2d");
  ctx.strokeStyle = "#f5a623";
  ctx.lineWidth = 2;
  ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
}

function renderWords(t) {
  const box = $("words");
  const a = state.attention;
  if (!a || !a.alignment || !t) { box.textContent = state.job ? state.job.captions?.[0] || "" : ""; return; }
  renderWeights(a.words, a.alignment[t - 1]);
}

function renderWeights(words, weights) {
  const box = $("words");
  const top = Math.max(...weights, 1e-6);
  box.replaceChildren(...words.map((w, j) => {
    const span = el("span", { title: `α = ${weights[j].toFixed(3)}`, "data-weight": weights[j] }, w);
    span.style.background = `rgba(74, 170, 136, ${(weights[j] / top).toFixed(3)})`;
    return span;
  }));
}

function stopPlayer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  $("play").textContent = "Play";
}

function togglePlay() {
  if (state.timer) return stopPlayer();
  const scrub = $("scrub");
  if (Number(scrub.value) >= state.frames.length) scrub.value = "1";
  $("play").textContent = "Pause";
  state.timer = setInterval(() => {
    const t = Number(scrub.value) + 1;
    if (t > state.frames.length) return stopPlayer();
    scrub.value = String(t);
    show(t);
  }, 80);
}

$("form").addEventListener("submit", submit);
$("caption").addEventListener("input", markCaption);
$("model").addEventListener("change", (e) => chooseModel(e.target.value));
$("reuse").addEventListener("click", () => { $("seed").value = $("reuse").dataset.seed; });
$("play").addEventListener("click", togglePlay);
$("scrub").addEventListener("input", (e) => { stopPlayer(); show(Number(e.target.value)); });
loadModels();
