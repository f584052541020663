// glimpse page: plain JS, no build step, no CDN. Talks only to this origin's /v1 API.
"use strict";
const $ = (id) => document.getElementById(id);
const NUMBER_WORDS = { zero: "0", one: "1", two: "2", three: "3", four: "4", five: "5", six: "6", seven: "7",
  eight: "8", nine: "9" };
const KEY_STORE = "glimpse-api-key";
const TERMINAL = ["done", "failed", "canceled", "expired"];
const state = { models: [], model: null, job: null, result: null, selected: 0, frames: [], attention: null,
  timer: null, stream: null, key: sessionStorage.getItem(KEY_STORE) || "" };
const blobs = new Map();  // API URL -> promise of its blob: URL (images of the current job, when a key is set)

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

// The API key (GLIMPSE_API_KEYS): once given, every request carries it: fetches, the event stream, images.

function authHeaders(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : { ...extra };
}

async function api(url, init = {}) {
  const res = await fetch(url, { ...init, headers: authHeaders(init.headers) });
  if (res.status === 401) needKey(true);
  return res;
}

function needKey(shown) {
  const note = $("key-note");
  note.textContent = state.key ? "This service needs an API key: the one given was not accepted."
    : "This service needs an API key: enter it here.";
  note.hidden = !shown;
  $("apikey").classList.toggle("need", shown);
}

function setKey() {
  state.key = $("apikey").value.trim();
  if (state.key) sessionStorage.setItem(KEY_STORE, state.key); else sessionStorage.removeItem(KEY_STORE);
  needKey(false);
  $("error").hidden = true;
  if (!state.models.length) loadModels();  // the first load may have been refused for want of a key
}

async function problemOf(res) {
  return res.json().catch(() => ({ title: `HTTP ${res.status}`, status: res.status }));
}

// <img src> cannot send a header: with a key, images come through fetch() and are shown as blob: URLs.
function setImage(img, url) {
  img.dataset.src = url;
  if (!state.key) { img.src = url; return; }
  if (!blobs.has(url)) {
    blobs.set(url, api(url).then(async (res) => {
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      return URL.createObjectURL(await res.blob());
    }).catch((err) => { blobs.delete(url); throw err; }));
  }
  blobs.get(url).then((blobUrl) => { if (img.dataset.src === url) img.src = blobUrl; }, () => {});
}

function forgetImages() {
  blobs.forEach((p) => p.then((blobUrl) => URL.revokeObjectURL(blobUrl), () => {}));
  blobs.clear();
}

// A download link cannot send a header either: with a key, fetch the file and save it from a blob: URL.
async function download(event, href) {
  if (!state.key) return;
  event.preventDefault();
  const res = await api(href);
  if (!res.ok) return res.status === 401 ? undefined : showError(await problemOf(res));
  const blobUrl = URL.createObjectURL(await res.blob());
  el("a", { href: blobUrl, download: href.split("/").pop() }).click();
  setTimeout(() => URL.revokeObjectURL(blobUrl), 10_000);
}

// Server-Sent Events over fetch(), since EventSource cannot send headers: calls on[event](data) for each event and
// reconnects with Last-Event-ID when the stream drops before a terminal one, as EventSource would.
async function readEvents(url, on, signal) {
  let lastId = "";
  let retry = 1000;
  while (!signal.aborted) {
    try {
      const res = await fetch(url, { headers: authHeaders(lastId ? { "Last-Event-ID": lastId } : {}), signal,
        cache: "no-store" });
      if (res.status === 401) return needKey(true);
      if (!res.ok && res.status < 500) return on.error(await problemOf(res));
      if (res.ok) {
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        let type = "";
        let data = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const lines = (buffer + value).split("\n");
          buffer = lines.pop();
          for (const raw of lines) {
            const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
            if (line === "") {  // a blank line ends an event
              const event = type || "message";
              const payload = data.length ? JSON.parse(data.join("\n")) : null;
              [type, data] = ["", []];
              if (TERMINAL.includes(event)) {  // stop before the handler runs: its errors must not reconnect
                reader.cancel();
                if (on[event]) on[event](payload);
                return;
              }
              if (payload && on[event]) on[event](payload);
              continue;
            }
            if (line.startsWith(":")) continue;  // a comment: the keepalive
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") type = text;
            else if (field === "data") data.push(text);
            else if (field === "id" && !text.includes("\0")) lastId = text;
            else if (field === "retry" && /^\d+$/.test(text)) retry = Number(text);
          }
        }
      }
    } catch (err) {
      if (signal.aborted) return;  // a newer job took over; otherwise the connection dropped: reconnect
    }
    await new Promise((resolve) => setTimeout(resolve, retry));
  }
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
  const res = await api("/v1/models");
  if (!res.ok) return res.status === 401 ? undefined : showError(await problemOf(res));
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
    (state.key ? "  -H \"Authorization: Bearer $GLIMPSE_API_KEY\" \\\n" : "") +
    `  -d '${JSON.stringify(body).replace(/'/g, "'\\''")}'`;
  const res = await api("/v1/generations", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({ title: `HTTP ${res.status}` }));
  if (!res.ok) return res.status === 401 ? undefined : showError(data);
  startJob(data);
}

function startJob(job) {
  stopPlayer();
  if (state.stream) state.stream.abort();
  forgetImages();
  Object.assign(state, { job, result: null, selected: 0, frames: [], attention: null });
  $("job").hidden = false;
  $("player").hidden = true;
  $("grid").replaceChildren();
  $("downloads").replaceChildren();
  $("bar").style.width = "0";
  $("frame").removeAttribute("src");
  delete $("frame").dataset.src;
  clearOverlay();
  renderWords(null);
  if (job.seeds && job.seeds.length) { $("reuse").disabled = false; $("reuse").dataset.seed = job.seeds[0]; }
  $("status").textContent = job.queue_position ? `queued (${job.queue_position} ahead)` : "queued";
  const on = {
    step(d) {
      $("bar").style.width = `${(100 * d.step) / d.steps}%`;
      $("status").textContent = `drawing: step ${d.step} of ${d.steps}`;
      if (d.frames.length) setImage($("frame"), d.frames[0]);
      if (d.live) showLive(d.live);
    },
    done: finish,
    error: showError,
  };
  for (const end of ["failed", "canceled", "expired"]) {
    on[end] = (d) => {
      $("status").textContent = end;
      showError({ title: `Generation ${end}`, detail: d.error || "" });
    };
  }
  state.stream = new AbortController();
  readEvents(job.links.events, on, state.stream.signal);
}

function finish(result) {
  state.result = result;
  $("bar").style.width = "100%";
  $("status").textContent = `done: ${result.images} image(s), seeds ${result.seeds.join(", ")}`;
  $("grid").replaceChildren(...result.outputs.map((o, i) => {
    const img = el("img", { alt: `sample ${i}`, "data-index": i });
    setImage(img, o.image);
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
    .filter(([, href]) => href).map(([name, href]) => {
      const a = el("a", { href, download: "" }, name);
      a.addEventListener("click", (e) => download(e, href));
      return a;
    }));
  const att = out.attention ? await api(out.attention) : null;
  state.attention = att && att.ok ? await att.json() : null;
  const scrub = $("scrub");
  scrub.max = String(state.frames.length);
  scrub.value = String(state.frames.length);
  $("player").hidden = false;
  show(state.frames.length);
}

function show(t) {
  setImage($("frame"), state.frames[t - 1]);
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
$("apikey").value = state.key;
$("apikey").addEventListener("change", setKey);
$("apikey").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); setKey(); } });
$("scrub").addEventListener("input", (e) => { stopPlayer(); show(Number(e.target.value)); });
loadModels();
