// glimpse page: plain JS, no build step, no CDN. Talks only to this origin's /v1 API.
"use strict";
const $ = (id) => document.getElementById(id);
const NUMBER_WORDS = { zero: "0", one: "1", two: "2", three: "3", four: "4", five: "5", six: "6", seven: "7",
  eight: "8", nine: "9" };
const KEY_STORE = "glimpse-api-key";
const TERMINAL = ["done", "failed", "canceled", "expired"];
const state = { models: [], model: null, mode: "caption", job: null, result: null, selected: 0, frames: [],
  attention: null, inputs: [], timer: null, stream: null, pen: null, ink: false, examples: [],
  key: sessionStorage.getItem(KEY_STORE) || "", textModels: [], captionModels: [], path: { timer: null, busy: false },
  classes: [], queries: [], querySources: [], jobSources: [] };
// What a request carries (a model's `modes`, GET /v1/models) -> the submit button's label. Caption models have one.
const MODES = { caption: "Draw", none: "Draw", images: "Reconstruct", walk: "Walk", image_set: "Draw new samples",
  likelihood: "Score", few_shot: "Classify" };
// The API's limits (worker/protocol.py, docs/api.md "Sets and few-shot classification"), said here before a POST
const MAX_EXAMPLES = 20;  // an image_set job's examples (MAX_SET_IMAGES), and a class's (MAX_SHOTS)
const MAX_CLASSES = 20;  // a classification's classes (MAX_CLASSES)
const MAX_QUERIES = 32;  // its query images (MAX_QUERY)
const MAX_CLASSIFY_IMAGES = 200;  // its uploads, support and query together (MAX_FEW_SHOT_IMAGES)
const PAD_SIDE = 196;  // the drawing box's side on screen, in CSS pixels (7 × 28 for an MNIST-sized model)
const INK_WIDTH = 2.5;  // stroke width in model pixels, about an MNIST pen's
const blobs = new Map();  // API URL -> promise of its blob: URL (images of the current job, when a key is set)
const pathBlobs = new Map();  // the same for the caption path's images, kept apart: a new job must not revoke them
const PATH_MS = 700;  // how long the caption path's animation shows each point

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

// A clickable node that the keyboard reaches too: in the tab order, Enter or Space acts as a click.
function activate(node, action) {
  node.setAttribute("tabindex", "0");
  node.setAttribute("role", "button");
  node.addEventListener("click", action);
  node.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); action(); }
  });
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
  if (!state.models.length && !state.textModels.length) loadModels();  // the first load may have been refused
}

async function problemOf(res) {
  return res.json().catch(() => ({ title: `HTTP ${res.status}`, status: res.status }));
}

// <img src> cannot send a header: with a key, images come through fetch() and are shown as blob: URLs.
function setImage(img, url, cache = blobs) {
  img.dataset.src = url;
  if (!state.key) { img.src = url; return; }
  if (!cache.has(url)) {
    cache.set(url, api(url).then(async (res) => {
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      return URL.createObjectURL(await res.blob());
    }).catch((err) => { cache.delete(url); throw err; }));
  }
  cache.get(url).then((blobUrl) => { if (img.dataset.src === url) img.src = blobUrl; }, () => {});
}

function forgetImages(cache = blobs) {
  cache.forEach((p) => p.then((blobUrl) => URL.revokeObjectURL(blobUrl), () => {}));
  cache.clear();
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

// The caption's unknown words, marked in a copy under it; nothing is shown while every word is known.
function markCaption() {
  const vocab = captioned() && state.model.vocabulary ? new Set(state.model.vocabulary) : null;
  const found = markWords($("marked"), $("caption").value, vocab ? (t) => !vocab.has(t.text) : null);
  if (!found.length) $("marked").replaceChildren();
  return found;
}

// The text in `box`, its words for which unknown(token, position) is true marked and listed under it.
function markWords(box, text, unknown) {
  box.replaceChildren();
  if (!unknown || !text.trim()) return [];
  const found = [];
  let at = 0;
  tokenize(text).forEach((t, i) => {
    box.append(document.createTextNode(text.slice(at, t.start)));
    const bad = unknown(t, i);
    box.append(el("span", bad ? { class: "unknown", title: `unknown word: word ${i + 1}` } : {}, t.raw));
    if (bad) found.push(`“${t.raw}” (word ${i + 1})`);
    at = t.end;
  });
  box.append(document.createTextNode(text.slice(at)));
  if (found.length) box.append(el("div", { class: "unknown-list" }, `Not in the vocabulary: ${found.join(", ")}`));
  return found;
}

// A problem (RFC 9457) in words: its title and detail; unknown words listed one a line instead of the detail, which
// says the same with 0-based positions (the page counts words from 1).
function showError(problem, box = $("error"), captionNames = null) {
  const words = problem.unknown_words || problem.unknown || [];
  const where = (u) => (captionNames && captionNames[u.caption] ? ` in ${captionNames[u.caption]}` : "");
  let text = `${problem.title || "Error"}${problem.status ? ` (${problem.status})` : ""}`;
  if (words.length) {
    text += ": the model does not know\n" + words.map((u) => `• “${u.word}”, word ${u.position + 1}${where(u)}`)
      .join("\n");
  } else if (problem.detail) {
    text += `: ${problem.detail}`;
  }
  box.textContent = text;
  box.hidden = false;
}

function fillList(list, captions) {
  list.replaceChildren(...captions.map((c) => {
    return activate(el("li", {}, c), () => { $("caption").value = c; markCaption(); $("caption").focus(); });
  }));
}

// Caption-conditioned models (alignDRAW) take a caption; DRAW draws unconditionally and the API refuses one. Text
// models have a vocabulary too, but they never reach the model picker (the caption path uses them).
function captioned() {
  return offers("caption");
}

function chooseModel(id) {
  state.model = state.models.find((m) => m.id === id) || state.models[0] || null;
  leaveJob();  // the last model's job and error do not describe this one
  $("error").hidden = true;
  $("upload").value = "";
  const conditional = captioned();
  $("tagline").textContent = tagline();
  $("caption-field").hidden = !conditional;
  $("caption").required = conditional;
  $("marked").hidden = !conditional;
  $("example-lists").hidden = !conditional;
  fillList($("examples"), state.model ? state.model.example_captions || [] : []);
  fillList($("heldout"), state.model ? state.model.held_out_captions || [] : []);
  markCaption();
  showModes(conditional);
  if (PAD_MODES.some(offers)) sizePad();
  Object.assign(state, { examples: [], classes: [], queries: [], querySources: [] });
  showExamples();
  showClasses();
}

// The header's line for the chosen model, from what it offers: caption models paint a caption over T steps.
function tagline() {
  const m = state.model;
  if (!m) return "";
  if (captioned()) return "Type a caption; watch alignDRAW paint it, one glimpse at a time.";
  const does = [["none", "samples"], ["images", "reconstructions"], ["walk", "latent walks"],
    ["image_set", "new drawings from a few examples"], ["likelihood", "likelihood scores"],
    ["few_shot", "few-shot classification"]]
    .filter(([mode]) => offers(mode)).map(([, what]) => what);
  const how = m.steps > 1 ? `, each drawn over ${m.steps} glimpses` : "";
  return `${m.id}: ${does.join(", ")}${how}.`;
}

// Generation modes beyond captions (IWAE, VAE/GAN): sample, reconstruct an image, walk between two seeds, score an
// image's likelihood; set models (the Neural Statistician): new samples of the symbol a few drawn examples show,
// and which of a few labelled classes each drawn query belongs to.
const PAD_MODES = ["images", "image_set", "likelihood", "few_shot"];  // the modes that read the drawing box

function offers(mode) {
  return !!(state.model && state.model.modes && mode in state.model.modes);
}

function showModes(conditional) {
  const choices = ["none", "images", "walk", "image_set", "likelihood", "few_shot"].filter(offers);
  const several = !conditional && choices.length > 1;
  $("modes").hidden = !several;
  document.querySelectorAll("input[name=mode]").forEach((r) => { r.closest("label").hidden = !offers(r.value); });
  let mode = "caption";
  if (!conditional) mode = choices.includes(state.mode) ? state.mode : choices[0] || "none";
  if (several) document.querySelector(`input[name=mode][value="${mode}"]`).checked = true;
  chooseMode(mode);
}

function chooseMode(mode) {
  if (mode !== state.mode) leaveJob();  // the last mode's result does not answer this one's form
  state.mode = mode;
  const pad = PAD_MODES.includes(mode);
  const panels = [["reconstruct", pad], ["walk", mode === "walk"], ["score-options", mode === "likelihood"]];
  for (const [id, shown] of panels) {
    $(id).hidden = !shown;
    $(id).disabled = !shown;  // a hidden panel's fields take no part in the form's validation
  }
  $("set-row").hidden = mode !== "image_set";
  $("classes-row").hidden = mode !== "few_shot";
  showPicks();
  $("pad-legend").textContent = { image_set: "Examples of one symbol", likelihood: "The image to score",
    few_shot: "Labelled examples and the drawings to classify" }[mode] || "Reconstruct an image";
  const sampling = mode === "caption" || mode === "none" || mode === "image_set";
  for (const id of ["n-field", "seed-field", "reuse"]) $(id).hidden = !sampling;
  $("unconditional").hidden = mode !== "none";
  $("submit").textContent = MODES[mode];
}

// The drawing box holds the image to reconstruct, at an integer multiple of the model's size: strokes of the pen,
// or an uploaded image (scaled to fit, grey). Sent as the box averaged down to the model's pixels.
function padScale() {
  return Math.max(1, Math.floor(PAD_SIDE / Math.max(state.model.width, state.model.height)));
}

function sizePad() {
  const pad = $("pad");
  const s = padScale();
  pad.width = state.model.width * s;
  pad.height = state.model.height * s;
  pad.style.width = `${pad.width}px`;
  pad.style.height = `${pad.height}px`;
  $("pad-size").textContent = `${state.model.width} × ${state.model.height}`;
  clearPad();
}

function clearPad() {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  state.ink = false;
  $("pad-note").textContent = "";
  showSent();
}

function invertPad() {
  const ctx = $("pad").getContext("2d");
  const image = ctx.getImageData(0, 0, $("pad").width, $("pad").height);
  invert(image.data);
  ctx.putImageData(image, 0, 0);
  state.ink = true;
  showSent();
}

function padPoint(event) {
  const pad = $("pad");
  const box = pad.getBoundingClientRect();
  return [((event.clientX - box.left) * pad.width) / box.width, ((event.clientY - box.top) * pad.height) / box.height];
}

function stroke([x0, y0], [x1, y1]) {
  const ctx = $("pad").getContext("2d");
  Object.assign(ctx, { strokeStyle: "#fff", lineWidth: INK_WIDTH * padScale(), lineCap: "round", lineJoin: "round" });
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
  state.ink = true;
}

// Pointer events: one code path for mouse, touch and pen; the pointer is captured so a stroke may leave the box.
function penDown(event) {
  if (event.button !== 0 || state.pen) return;
  event.preventDefault();
  try { $("pad").setPointerCapture(event.pointerId); } catch { /* a synthetic pointer: nothing to capture */ }
  state.pen = { id: event.pointerId, at: padPoint(event) };
  stroke(state.pen.at, state.pen.at);  // a tap leaves a dot
}

function penMove(event) {
  if (!state.pen || event.pointerId !== state.pen.id) return;
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const move of moves.length ? moves : [event]) {
    const at = padPoint(move);
    stroke(state.pen.at, at);
    state.pen.at = at;
  }
}

function penUp(event) {
  if (!state.pen || event.pointerId !== state.pen.id) return;
  state.pen = null;
  showSent();
}

// RGBA pixels in place: grey by the ITU-R 601-2 luma (the API's rule for colour), opaque.
function toGrey(data) {
  for (let i = 0; i < data.length; i += 4) {
    const v = Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]);
    data.set([v, v, v, 255], i);
  }
}

function invert(data) {
  for (let i = 0; i < data.length; i += 4) data.set([255 - data[i], 255 - data[i + 1], 255 - data[i + 2]], i);
}

// Mean grey of the outermost pixels: photos and scans are dark ink on light paper, the models light on black.
function borderMean(data, w, h) {
  let sum = 0;
  let count = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (y > 0 && y < h - 1 && x > 0 && x < w - 1) continue;
      sum += data[(y * w + x) * 4];
      count += 1;
    }
  }
  return count ? sum / count : 0;
}

// An image file (anything the browser decodes): fitted into the model's size, grey, on black (transparency too,
// as the API composites it), inverted when its background is light; then shown in the drawing box to touch up.
async function loadFile() {
  const file = $("upload").files[0];
  if (!file || !state.model) return;
  const picture = new Image();
  picture.src = URL.createObjectURL(file);
  try {
    await picture.decode();
  } catch {
    $("pad-note").textContent = `${file.name} is not an image this browser can read.`;
    return;
  } finally {
    URL.revokeObjectURL(picture.src);
  }
  const [iw, ih] = [picture.naturalWidth, picture.naturalHeight];
  const { width, height } = state.model;
  const fit = Math.min(width / iw, height / ih);
  const w = Math.max(1, Math.round(iw * fit));
  const h = Math.max(1, Math.round(ih * fit));
  const small = el("canvas", { width: w, height: h });
  const ctx = small.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(picture, 0, 0, w, h);
  const image = ctx.getImageData(0, 0, w, h);
  toGrey(image.data);
  const light = borderMean(image.data, w, h) > 127;
  if (light) invert(image.data);
  ctx.putImageData(image, 0, 0);
  clearPad();
  const pad = $("pad").getContext("2d");
  const s = padScale();
  pad.imageSmoothingEnabled = false;
  pad.drawImage(small, Math.floor((width - w) / 2) * s, Math.floor((height - h) / 2) * s, w * s, h * s);
  state.ink = true;
  showSent();
  $("pad-note").textContent = `${file.name} (${iw} × ${ih}) scaled to ${w} × ${h}` +
    (light ? ", inverted: its background was light." : ".");
}

// The drawing box averaged down to the model's pixels, read as the model reads them (`pixels`: binary models see
// pixel > 127 as ink), as a PNG data URL: what is sent, and shown beside the reconstruction.
function padImage() {
  const { width, height } = state.model;
  const s = padScale();
  const big = $("pad").getContext("2d").getImageData(0, 0, width * s, height * s).data;
  const small = new ImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let sum = 0;
      for (let dy = 0; dy < s; dy++) {
        for (let dx = 0; dx < s; dx++) sum += big[((y * s + dy) * width * s + x * s + dx) * 4];
      }
      let v = Math.round(sum / (s * s));
      if (state.model.pixels !== "grey") v = v > 127 ? 255 : 0;
      small.data.set([v, v, v, 255], (y * width + x) * 4);
    }
  }
  const canvas = el("canvas", { width, height });
  canvas.getContext("2d").putImageData(small, 0, 0);
  return canvas.toDataURL("image/png");
}

function showSent() {
  if (state.model) $("sent").src = padImage();
}

// The examples of an image_set job: the drawing box's content as the model reads it, added one at a time.
function addExample() {
  if (!state.ink) return padNote("Draw an example in the box first.");
  if (state.examples.length >= MAX_EXAMPLES) return padNote(`At most ${MAX_EXAMPLES} examples.`);
  state.examples.push(padImage());
  clearPad();
  showExamples();
  return true;
}

function showExamples() {
  const examples = state.examples || [];
  $("set").replaceChildren(...thumbnails(examples, "example", (i) => {
    state.examples.splice(i, 1);
    showExamples();
    refocus($("set"), i, $("add-example"));
  }));
  $("set-count").textContent = `${examples.length} example${examples.length === 1 ? "" : "s"}`;
}

// A classification's support: the drawing box's content added to the class named in the label field (a new name
// makes a new class), and its queries, added one at a time. A click on a drawing removes it.
function addShot() {
  const label = $("class-label").value.trim();
  if (!label) return padNote("Name the class first.");
  if (!state.ink) return padNote("Draw an example in the box first.");
  let cls = state.classes.find((c) => c.label === label);
  if (!cls && state.classes.length >= MAX_CLASSES) return padNote(`At most ${MAX_CLASSES} classes.`);
  if (cls && cls.images.length >= MAX_EXAMPLES) return padNote(`At most ${MAX_EXAMPLES} examples a class.`);
  if (classifyImages() >= MAX_CLASSIFY_IMAGES) return padNote(`At most ${MAX_CLASSIFY_IMAGES} drawings in all.`);
  if (!cls) state.classes.push(cls = { label, images: [] });
  cls.images.push(padImage());
  clearPad();
  showClasses();
  return true;
}

function addQuery() {
  if (!state.ink) return padNote("Draw a drawing to classify in the box first.");
  if (state.queries.length >= MAX_QUERIES) return padNote(`At most ${MAX_QUERIES} queries.`);
  if (classifyImages() >= MAX_CLASSIFY_IMAGES) return padNote(`At most ${MAX_CLASSIFY_IMAGES} drawings in all.`);
  state.queries.push(padImage());
  state.querySources.push(null);  // drawn here: no known class
  clearPad();
  showClasses();
  return true;
}

function padNote(text) {
  $("pad-note").textContent = text;
  return false;
}

function classifyImages() {
  return state.queries.length + state.classes.reduce((sum, c) => sum + c.images.length, 0);
}

function thumbnails(images, what, remove) {
  return images.map((src, i) => activate(el("img", { src, alt: `${what} ${i + 1} (remove)`, title: "remove",
    "data-index": i }), () => remove(i)));
}

// After a click removed a drawing from a list the page rebuilt: the keyboard stays there, on the drawing that took
// its place (or the one before), else on `fallback`.
function refocus(list, i, fallback) {
  const items = list.querySelectorAll("img");
  (items[Math.min(i, items.length - 1)] || fallback).focus();
}

function showClasses() {
  $("classes").replaceChildren(...state.classes.map((c, n) => {
    const row = el("div", { class: "class-row", "data-label": c.label });
    const set = el("div", { class: "set" });
    set.replaceChildren(...thumbnails(c.images, `${c.label}, example`, (i) => {
      c.images.splice(i, 1);
      if (!c.images.length) state.classes.splice(n, 1);
      showClasses();
      const row = $("classes").children[c.images.length ? n : Math.min(n, state.classes.length - 1)];
      refocus(row || $("classes"), c.images.length ? i : 0, $("class-label"));
    }));
    row.replaceChildren(el("span", { class: "class-label" }, c.label), set);
    return row;
  }));
  $("queries").replaceChildren(...thumbnails(state.queries, "query", (i) => {
    state.queries.splice(i, 1);
    state.querySources.splice(i, 1);
    showClasses();
    refocus($("queries"), i, $("add-query"));
  }));
  $("query-count").textContent = `${state.queries.length} quer${state.queries.length === 1 ? "y" : "ies"}`;
}

// The model's example sets (GET /v1/models `example_sets`: characters it never read in training), to pick instead
// of drawing: all of a set's drawings but the last become the examples, or a class whose query is that last one.
function showPicks() {
  const sets = (state.model && state.model.example_sets) || [];
  const shown = sets.length > 0 && (state.mode === "image_set" || state.mode === "few_shot");
  $("picks").hidden = !shown;
  if (!shown) return;
  $("picks-what").textContent = state.mode === "image_set" ? "all but one of its drawings become the examples."
    : "all but one of its drawings become a class named after it, and the last one a query.";
  $("pick-list").replaceChildren(...sets.map((set, i) => activate(el("img", { src: dataUrl(set.images[0]),
    alt: `${set.name} (pick)`, title: set.name, "data-index": i }), () => pick(set, i))));
}

function dataUrl(png) {
  return `data:image/png;base64,${png}`;
}

function pick(set, i) {
  const images = set.images.map(dataUrl);
  const examples = (images.length > 1 ? images.slice(0, -1) : images).slice(0, MAX_EXAMPLES);
  if (state.mode === "image_set") {
    const replaced = state.examples.length ? ` (in place of the ${state.examples.length} before)` : "";
    state.examples = examples;
    showExamples();
    return picked(i, `The examples are ${examples.length} drawings of ${set.name}${replaced}.`);
  }
  if (state.classes.some((c) => c.label === set.name)) return padNote(`${set.name} is a class already.`);
  if (state.classes.length >= MAX_CLASSES) return padNote(`At most ${MAX_CLASSES} classes.`);
  const query = images.length > 1 && state.queries.length < MAX_QUERIES ? [images[images.length - 1]] : [];
  if (classifyImages() + examples.length + query.length > MAX_CLASSIFY_IMAGES) {
    return padNote(`At most ${MAX_CLASSIFY_IMAGES} drawings in all.`);
  }
  state.classes.push({ label: set.name, images: examples });
  state.queries.push(...query);
  state.querySources.push(...query.map(() => set.name));  // its own class: the result can say whether it is right
  showClasses();
  const without = images.length > 1 && !query.length ? ` (no query: at most ${MAX_QUERIES})` : " and a query";
  return picked(i, `Added the class ${set.name} (${examples.length} drawings)${without}.`);
}

function picked(i, note) {
  [...$("pick-list").children].forEach((img, j) => img.classList.toggle("picked", j === i));
  padNote(note);
  return true;
}

// Both ends of a walk: the seeds given, or random ones written into their fields (to see and keep).
function walkSeeds() {
  return ["walk-from", "walk-to"].map((id) => {
    if ($(id).value === "") $(id).value = String(Math.floor(Math.random() * 2 ** 31));
    return Number($(id).value);
  });
}

// A model that draws: some mode of it returns something other than text (text models only write sentences).
function drawsImages(m) {
  return Object.values(m.modes || {}).some((out) => out !== "text");
}

async function loadModels() {
  const res = await api("/v1/models");
  if (!res.ok) return res.status === 401 ? undefined : showError(await problemOf(res));
  const models = (await res.json()).models;
  state.models = models.filter(drawsImages);
  state.textModels = models.filter((m) => m.modes && "text_pair" in m.modes);
  state.captionModels = state.models.filter((m) => "caption" in m.modes);
  showPathPanel();
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.id }, `${m.id} (${m.kind})`)));
  const preferred = state.models.find((m) => m.default) || state.models[0];
  if (preferred) select.value = preferred.id;
  chooseModel(select.value);
}

// What the form asks for: the collection to POST to and the body.
function request() {
  if (state.mode === "likelihood") {
    return ["/v1/likelihoods", { model: $("model").value, images: [padImage()], k: Number($("k").value) || 1000 }];
  }
  if (state.mode === "few_shot") {
    const support = state.classes.map((c) => ({ label: c.label, images: [...c.images] }));
    return ["/v1/classifications", { model: $("model").value, support, query: [...state.queries] }];
  }
  return ["/v1/generations", requestBody()];
}

function requestBody() {
  if (state.mode === "images") return { model: $("model").value, images: [padImage()] };
  if (state.mode === "walk") {
    return { model: $("model").value, walk: { seeds: walkSeeds(), points: Number($("points").value) || 8 } };
  }
  const body = { model: $("model").value, n: Number($("n").value) || 1 };
  if (state.mode === "image_set") body.images = [...state.examples];
  if (captioned()) body.caption = $("caption").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function submit(event) {
  event.preventDefault();
  $("error").hidden = true;
  markCaption();
  if ((state.mode === "images" || state.mode === "likelihood") && !state.ink) {
    const what = state.mode === "images" ? "Nothing to reconstruct" : "Nothing to score";
    return showError({ title: what, detail: "draw in the box or pick an image file first." });
  }
  if (state.mode === "image_set") {
    if (state.ink) addExample();  // what is in the box counts as one more example
    if (!state.examples.length) {
      return showError({ title: "No examples", detail: "draw 1–20 examples of one symbol, adding each, first." });
    }
  }
  if (state.mode === "few_shot") {
    if (state.classes.length < 2) {  // checked first: a drawing left in the box may be a class's, not yet added
      return showError({ title: "Too few classes", detail: "add examples of at least two classes, each named." });
    }
    if (state.ink && !addQuery()) {  // what is in the box counts as one more query
      return showError({ title: "The drawing in the box is one too many",
        detail: `${$("pad-note").textContent} Clear the box, or remove a drawing, first.` });
    }
    if (!state.queries.length) {
      return showError({ title: "Nothing to classify", detail: "draw a drawing to classify and add it as a query." });
    }
  }
  const [collection, body] = request();
  $("curl").textContent = `curl -s -X POST ${location.origin}${collection} \\\n` +
    "  -H 'Content-Type: application/json' \\\n" +
    (state.key ? "  -H \"Authorization: Bearer $GLIMPSE_API_KEY\" \\\n" : "") +
    `  -d '${JSON.stringify(body).replace(/'/g, "'\\''")}'`;
  const sources = state.mode === "few_shot" ? [...state.querySources] : [];  // as sent: the form may change meanwhile
  const res = await api(collection, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({ title: `HTTP ${res.status}` }));
  if (!res.ok) return res.status === 401 ? undefined : showError(data);
  state.jobSources = sources;
  startJob(data, body.images || body.query || []);
}

// A walk's frames are the points of its path; every other job's, the steps of its drawing.
function unit() {
  return state.job && state.job.condition === "walk" ? "point" : "step";
}

function setProgress(fraction) {
  $("bar").style.width = `${100 * fraction}%`;
  $("bar").parentElement.setAttribute("aria-valuenow", String(Math.round(100 * fraction)));
}

// The page stops showing its job (a new one, another model or mode): stop following it and, unless it ended, cancel
// it, as nobody will see what it draws.
function leaveJob() {
  stopPlayer();
  if (state.stream) state.stream.abort();
  state.stream = null;
  if (state.job && !state.ended) api(state.job.links.self, { method: "DELETE" }).catch(() => {});
  Object.assign(state, { job: null, result: null, frames: [], inputs: [], attention: null });
  $("reuse").disabled = true;  // its seed was the left job's
  $("job").hidden = true;
}

async function cancelJob() {
  const job = state.job;
  if (!job || state.ended) return;
  $("cancel").disabled = true;
  state.canceling = true;
  $("status").textContent = "canceling…";
  const res = await api(job.links.self, { method: "DELETE" });
  if (state.job !== job) return;  // the page moved on meanwhile: nothing to say about that job
  if (!res.ok && res.status !== 409 && res.status !== 401) showError(await problemOf(res));  // 409: it had ended
}

function ended() {
  state.ended = true;
  $("cancel").hidden = true;
}

function startJob(job, inputs = []) {
  leaveJob();
  forgetImages();
  Object.assign(state, { job, inputs, result: null, selected: 0, frames: [], attention: null, ended: false,
    canceling: false });
  $("job").hidden = false;
  $("cancel").hidden = false;
  $("cancel").disabled = false;
  $("score").hidden = true;
  $("labels-wrap").hidden = true;
  $("canvas-wrap").hidden = false;
  $("player").hidden = true;
  $("input-figure").hidden = true;
  $("grid").replaceChildren();
  $("downloads").replaceChildren();
  setProgress(0);
  $("frame").removeAttribute("src");
  delete $("frame").dataset.src;
  clearOverlay();
  renderWords(null);
  if (job.seeds && job.seeds.length) { $("reuse").disabled = false; $("reuse").dataset.seed = job.seeds[0]; }
  $("status").textContent = job.queue_position ? `queued (${job.queue_position} ahead)` : "queued";
  const on = {
    step(d) {
      setProgress(d.step / d.steps);
      if (!state.canceling) {  // "canceling…" stays until the job says it ended
        $("status").textContent = `${unit() === "point" ? "walking" : "drawing"}: ${unit()} ${d.step} of ${d.steps}`;
      }
      if (d.frames.length) setImage($("frame"), d.frames[0]);
      if (d.live) showLive(d.live);
    },
    done: finish,
    error: (problem) => { ended(); showError(problem); },  // the stream was refused: the page follows it no more
  };
  for (const end of ["failed", "canceled", "expired"]) {
    on[end] = (d) => {
      ended();
      if (end === "canceled") {  // what it had finished stays: the images whose every step was drawn
        $("status").textContent = "canceled";
        if (d && d.outputs && d.outputs.some((o) => o.image || o.label)) finish(d, true);
        return;
      }
      $("status").textContent = end;
      const what = { likelihood: "Scoring", few_shot: "Classification" }[job.condition] || "Generation";
      showError({ title: `${what} ${end}`, detail: d.error || "" });
    };
  }
  state.stream = new AbortController();
  readEvents(job.links.events, on, state.stream.signal);
}

function doneText(result) {
  const seeds = result.seeds || [];
  if (result.condition === "walk") {
    const points = result.outputs[0] ? result.outputs[0].frames.length : 0;
    return `done: a walk of ${points} points` + (seeds.length ? ` from seed ${seeds[0]} to seed ${seeds[1]}` : "");
  }
  if (result.condition === "images") return `done: ${result.images} reconstruction(s)`;
  if (result.condition === "image_set") {
    return `done: ${result.images} new sample(s) of ${state.inputs.length} example(s), seeds ${seeds.join(", ")}`;
  }
  return `done: ${result.images} image(s), seeds ${seeds.join(", ")}`;
}

function finish(job, canceled = false) {
  ended();
  const scored = job.condition === "likelihood" || job.condition === "few_shot";  // outputs without an image
  const result = { ...job, outputs: job.outputs.filter((o) => o.image || (scored && (o.label || !canceled))) };
  state.result = result;
  setProgress(1);
  if (result.condition === "likelihood") return showScore(result);
  if (result.condition === "few_shot") return showLabels(result, canceled);
  $("status").textContent = canceled ? `canceled: the ${result.outputs.length} image(s) it had finished`
    : doneText(result);
  $("grid").replaceChildren(...result.outputs.map((o, i) => {
    const img = el("img", { alt: `sample ${i + 1}`, "data-index": i });
    setImage(img, o.image);
    return activate(img, () => select(i));
  }));
  select(0);
}

// A likelihood job: its bound in nats beside the image as the model read it.
function showScore(result) {
  const out = result.outputs[0];
  $("status").textContent = `done: scored with k = ${out.k} samples, seed ${result.seeds[0]}`;
  $("score").textContent = `−log p(x) ≤ ${out.nll.toFixed(2)} nats (−L_${out.k}); −ELBO ` +
    `${(-out.elbo).toFixed(2)} from the same samples`;
  $("score").hidden = false;
  $("canvas-wrap").hidden = true;  // a score draws nothing: the input alone, beside its number
  $("input-figure").hidden = !state.inputs[0];
  if (state.inputs[0]) $("input-shown").src = state.inputs[0];
}

// A classification: each query beside its label and every class's score, the nearest first; a query picked from
// a character's drawings says whether its label is that character.
function showLabels(result, canceled = false) {
  const n = result.outputs.length;
  const known = result.outputs.filter((o) => state.jobSources[o.input]);
  const right = known.filter((o) => o.label === state.jobSources[o.input]).length;
  $("status").textContent = `${canceled ? "canceled" : "done"}: ${n} quer${n === 1 ? "y" : "ies"} classified` +
    (known.length ? `; ${right} of the ${known.length} picked ones labelled with their own character` : "");
  $("canvas-wrap").hidden = true;  // nothing is drawn: the queries, each with its label
  $("labels").replaceChildren(...result.outputs.map((o) => {
    const li = el("li", { class: "labelled", "data-label": o.label });
    const img = el("img", { alt: `query ${o.input + 1}` });
    img.src = state.inputs[o.input];
    const source = state.jobSources[o.input];
    const head = el("div", { class: "label-head" });
    head.replaceChildren(el("strong", {}, o.label), ...(source ? [el("span", { class: source === o.label ? "right"
      : "wrong" }, source === o.label ? "✓ its own character" : `✗ it is ${source}`)] : []));
    const ranked = Object.entries(o.scores).sort(([, a], [, b]) => b - a);
    const scores = el("ol", { class: "scores", "aria-label": "score of each class, nearest first" });
    scores.replaceChildren(...ranked.map(([label, s]) => el("li", {}, `${label} ${s.toFixed(2).replace("-", "−")}`)));
    const side = el("div", { class: "label-side" });
    side.replaceChildren(head, scores);
    li.replaceChildren(img, side);
    return li;
  }));
  $("labels-wrap").hidden = false;
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
  const input = out.input != null ? state.inputs[out.input] : null;  // a reconstruction: its input beside it
  $("input-figure").hidden = !input;
  if (input) $("input-shown").src = input;
  const scrub = $("scrub");
  scrub.max = String(state.frames.length);
  scrub.value = String(state.frames.length);
  scrub.setAttribute("aria-label", unit());
  $("player").hidden = state.frames.length < 2;  // a one-step model's image has nothing to play
  show(state.frames.length);
}

function show(t) {
  setImage($("frame"), state.frames[t - 1]);
  $("stepLabel").textContent = `${unit()} ${t} / ${state.frames.length}`;
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

// The caption path: a text model writes the sentences between two captions (an `interpolate` job), then one
// alignDRAW job draws them all from one seed, so what changes along the path comes from the captions alone. Shown as
// a strip in path order and as an animation that steps through it.

function fillModelSelect(select, models, preferred) {
  select.replaceChildren(...models.map((m) => el("option", { value: m.id }, m.id)));
  if (preferred) select.value = preferred.id;
  select.closest("label").hidden = models.length < 2;
}

function showPathPanel() {
  const shown = state.textModels.length > 0 && state.captionModels.length > 0;
  $("path").hidden = !shown;
  if (!shown) return;
  const drawer = state.captionModels.find((m) => m.default) || state.captionModels[0];
  fillModelSelect($("path-text-model"), state.textModels, writerFor(drawer));
  fillModelSelect($("path-draw-model"), state.captionModels, drawer);
  $("path-models").hidden = state.textModels.length < 2 && state.captionModels.length < 2;
  markPath();
}

// Default writer: the text model whose words the drawer knows best, since a PTB model's sentences cannot be drawn.
function writerFor(drawer) {
  const known = new Set(drawer.vocabulary || []);
  const shares = state.textModels.map((m) => (m.vocabulary || []).filter((w) => known.has(w)).length
    / ((m.vocabulary || []).length || 1));
  return state.textModels[shares.indexOf(Math.max(...shares))];  // the first of equals
}

function pathModel(models, selectId) {
  return models.find((m) => m.id === $(selectId).value) || models[0];
}

// Words of from and to that the text model does not know, marked under each as it is typed (nothing is shown under
// a caption it knows all of); `refused` (a 422's unknown_words: caption 0 is from, 1 is to) marks the words the API
// named too.
function markPath(refused = []) {
  const text = pathModel(state.textModels, "path-text-model");
  const vocab = text && text.vocabulary ? new Set(text.vocabulary) : null;
  ["path-from", "path-to"].forEach((id, c) => {
    const named = new Set((refused || []).filter((u) => u.caption === c).map((u) => u.position));
    const box = $(`${id}-marked`);
    if (!markWords(box, $(id).value, (t, i) => named.has(i) || (vocab !== null && !vocab.has(t.text))).length) {
      box.replaceChildren();
    }
  });
}

async function postJob(body) {
  const res = await api("/v1/generations", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  if (!res.ok) throw await problemOf(res);
  return res.json();
}

const ENDED = ["succeeded", "failed", "canceled", "expired"];

// Follows a job by long polls: ?wait= with the last ETag answers once per change (a 304 when the wait ran out
// unchanged). Calls onChange with each new body and resolves to the ended job. A dropped connection or a 5xx is
// retried after a second; any other refusal throws its problem.
async function followJob(job, onChange) {
  let tag = null;
  while (!ENDED.includes(job.status)) {
    let res = null;
    try {
      res = await api(`${job.links.self}?wait=30`, { headers: tag ? { "If-None-Match": tag } : {}, cache: "no-store" });
    } catch { /* the connection dropped: look again */ }
    if (res && res.status === 304) continue;
    if (res && res.ok) {
      tag = res.headers.get("ETag");
      job = await res.json();
      onChange(job);
      continue;
    }
    if (res && res.status < 500) throw await problemOf(res);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return job;
}

function queued(job) {
  return job.status === "queued" ? ` (queued${job.queue_position ? `, ${job.queue_position} ahead` : ""})` : "";
}

function drawingText(job, count) {
  const p = job.progress || {};
  const rows = p.chunks > 1 ? `, rows ${p.chunk} of ${p.chunks}` : "";
  const step = job.status === "running" && p.steps ? `: step ${p.step} of ${p.steps}${rows}` : "";
  return `drawing the ${count} captions${step}…${queued(job)}`;
}

function jobEnded(job) {
  return { title: `Generation ${job.status}`, detail: job.error || "" };
}

async function drawPath(event) {
  event.preventDefault();
  if (state.path.busy) return;
  stopPath();
  $("path-error").hidden = true;
  $("path-result").hidden = true;
  markPath();
  const text = pathModel(state.textModels, "path-text-model");
  const drawer = pathModel(state.captionModels, "path-draw-model");
  if ($("path-seed").value === "") $("path-seed").value = String(Math.floor(Math.random() * 2 ** 31));
  const seed = Number($("path-seed").value);
  const status = $("path-status");
  state.path.busy = true;
  $("path-submit").disabled = true;
  let drawing = false;
  let names = ["“from”", "“to”"];  // what a 422's unknown_words[].caption indexes: the path's ends, then its captions
  try {
    status.textContent = "writing the path…";
    const interpolate = { from: $("path-from").value, to: $("path-to").value,
      points: Number($("path-points").value) || 8 };
    let job = await postJob({ model: text.id, interpolate });
    job = await followJob(job, (j) => { status.textContent = `writing the path…${queued(j)}`; });
    if (job.status !== "succeeded") throw jobEnded(job);
    const texts = [...job.outputs].sort((a, b) => a.index - b.index).map((o) => o.text);
    [drawing, names] = [true, texts.map((t, i) => `point ${i + 1} (“${t}”)`)];
    status.textContent = drawingText({ status: "queued" }, texts.length);
    let drawn = await postJob({ model: drawer.id, captions: texts, n: 1, seeds: texts.map(() => seed) });
    drawn = await followJob(drawn, (j) => { status.textContent = drawingText(j, texts.length); });
    if (drawn.status !== "succeeded") throw jobEnded(drawn);
    showPath(texts, drawn);
    status.textContent = `done: ${texts.length} captions written by ${text.id}, each drawn by ${drawer.id} from ` +
      `seed ${seed}.`;
  } catch (problem) {
    const p = problem instanceof Error ? { title: "Error", detail: problem.message } : problem;
    status.textContent = "";
    p.title = `${drawing ? "Drawing" : "Writing"} the path: ${p.title || "error"}`;
    if (!drawing) markPath(p.unknown_words);
    showError(p, $("path-error"), names);
  } finally {
    state.path.busy = false;
    $("path-submit").disabled = false;
  }
}

function showPath(texts, job) {
  forgetImages(pathBlobs);
  const outputs = [...job.outputs].sort((a, b) => a.index - b.index);
  state.path.points = outputs.map((o, i) => ({ image: o.image, caption: texts[i] }));
  $("path-strip").replaceChildren(...state.path.points.map((point, i) => {
    const img = el("img", { alt: `point ${i + 1}` });
    setImage(img, point.image, pathBlobs);
    const figure = el("figure", { "data-index": i });
    figure.append(img, el("figcaption", {}, point.caption));
    return activate(figure, () => { stopPath(); showPoint(i); });  // a point chosen: the animation holds it
  }));
  $("path-result").hidden = false;
  showPoint(0);
  playPath();
}

function playPath() {
  stopPath();
  state.path.timer = setInterval(() => showPoint((state.path.at + 1) % state.path.points.length), PATH_MS);
  $("path-anim").title = "pause";
}

function showPoint(i) {
  const point = state.path.points[i];
  state.path.at = i;
  setImage($("path-anim"), point.image, pathBlobs);
  $("path-anim-step").textContent = `point ${i + 1} / ${state.path.points.length}`;
  $("path-anim-caption").textContent = point.caption;
  [...$("path-strip").children].forEach((f, j) => f.classList.toggle("selected", j === i));
}

function stopPath() {
  if (state.path.timer) clearInterval(state.path.timer);
  state.path.timer = null;
  $("path-anim").title = "play";
}

$("form").addEventListener("submit", submit);
$("caption").addEventListener("input", markCaption);
$("model").addEventListener("change", (e) => chooseModel(e.target.value));
$("reuse").addEventListener("click", () => { $("seed").value = $("reuse").dataset.seed; });
$("play").addEventListener("click", togglePlay);
$("cancel").addEventListener("click", cancelJob);
$("apikey").value = state.key;
$("apikey").addEventListener("change", setKey);
$("apikey").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); setKey(); } });
$("scrub").addEventListener("input", (e) => { stopPlayer(); show(Number(e.target.value)); });
document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => chooseMode(r.value)));
$("pad").addEventListener("pointerdown", penDown);
$("pad").addEventListener("pointermove", penMove);
for (const end of ["pointerup", "pointercancel", "lostpointercapture"]) $("pad").addEventListener(end, penUp);
$("clear").addEventListener("click", clearPad);
$("invert").addEventListener("click", invertPad);
$("upload").addEventListener("change", loadFile);
$("add-example").addEventListener("click", addExample);
$("add-shot").addEventListener("click", addShot);
$("add-query").addEventListener("click", addQuery);
$("class-label").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); addShot(); } });
$("path-form").addEventListener("submit", drawPath);
activate($("path-anim"), () => (state.path.timer ? stopPath() : playPath()));
for (const id of ["path-from", "path-to", "path-text-model"]) $(id).addEventListener("input", () => markPath());
loadModels();
