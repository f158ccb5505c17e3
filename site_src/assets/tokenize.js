/* "Tokenize your own text" (templates/_tokenize.j2, generator/tokenize_page.py): as the reader
 * types, every model's tokenizer splits the text side by side. Each model gets a worker
 * (tokenize-worker.js) that loads the vendored @huggingface/tokenizers and the model's
 * tokenizer.json; this script draws the chips as the prompt pages do (generator/pagedata.py
 * chip_groups, show_token): byte pieces grouped under their character, whitespace made visible.
 * Every URL comes from the page's data attributes. Text only ever enters the page as text
 * (textContent, attribute values), never as markup.
 *
 * For tests and scripts: each column carries data-tokens-of="<model slug>", each chip its token
 * id in data-id, in order; the view's aria-busy is "false" and data-shown equals data-seq once
 * every column shows the current text. performance marks "atlas-tokenize-first" (first tokens
 * shown) and "atlas-tokenize-all" (every tokenizer shown), and data-update-ms (input event to every
 * column redrawn, layout included, last keystroke) are for benchmarks/tokenize_bench.py, with the
 * parts of the last update: on the view data-input-ms (the input handler), data-boundaries-ms,
 * data-layout-ms; on each column data-arrived-ms (input event to its tokens back from the worker),
 * data-encode-ms (in the worker), data-draw-ms (its chips), data-load-ms and data-fetch-ms (its
 * tokenizer loaded, of which fetched and parsed). */
(function () {
  "use strict";
  const root = document.querySelector(".atlas-tokenize");
  if (!root || typeof Worker === "undefined") return;
  const box = root.querySelector(".atlas-tokenize-text");
  const status = root.querySelector(".atlas-tokenize-status");
  const bounds = root.querySelector(".atlas-boundaries");
  const boundsSummary = root.querySelector(".atlas-boundaries-summary");
  const embedLink = document.querySelector(".atlas-tokenize-embed");
  const max = Number(root.dataset.max);
  const abs = (u) => new URL(u, document.baseURI).href;
  const utf8 = new TextEncoder();
  const VISIBLE = { " ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
  const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}]/u;
  const MARK = /^\p{M}/u;
  const MAX_CHAR_PIECES = 16;  // as pagedata.MAX_CHAR_PIECES
  let seq = 0;
  let text = "";
  let inputAt = null;
  let firstShown = false;
  const boundsDrawn = { keys: [], els: [] };

  const columns = Array.from(root.querySelectorAll("[data-tokens-of]")).map((el) => ({
    el, slug: el.dataset.tokensOf, name: el.querySelector(".atlas-model-name").textContent,
    chips: el.querySelector(".atlas-tokens"), counts: el.querySelector(".atlas-tokenize-counts"),
    detail: el.querySelector(".atlas-tokenize-detail"), worker: null, ready: false, busy: false,
    next: null, shown: -1, result: null, failed: false, drawn: { keys: [], els: [] },
    texts: new Map(),
  }));

  function say(message, isError) {
    status.textContent = message;
    status.classList.toggle("atlas-error", !!isError);
  }

  // --- what a chip shows (pagedata.show_token) ---------------------------------------------------

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
  }

  function show(str, bytes, id) {
    if (str === null) return "<" + hex(bytes) + ">";
    if (str === "") return "[" + id + "]";
    let out = "";
    for (const ch of str) {
      if (VISIBLE[ch]) out += VISIBLE[ch];
      else if (INVISIBLE.test(ch)) out += "\u27e8U+" + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27e9";
      else out += ch;
    }
    return out;
  }

  const strict = new TextDecoder("utf-8", { fatal: true });
  function decode(bytes) {
    try { return strict.decode(bytes); } catch (e) { return null; }
  }
  function incomplete(bytes) {  // more pieces could complete it (not invalid already)
    try { new TextDecoder("utf-8", { fatal: true }).decode(bytes, { stream: true }); return true; } catch (e) { return false; }
  }

  /* Tokens grouped under the character(s) their bytes form together (pagedata.chip_groups):
   * [{char: null | string, codepoints, tokens: [{i, id, bytes, text}]}]. `texts`: the column's
   * token id -> its bytes decoded (null: not whole characters); a token's bytes are the same
   * wherever it stands, so a keystroke decodes only the ids it has not seen. */
  function chipGroups(res, texts) {
    const groups = [];
    let pending = [];
    let at = 0;
    const flush = () => { for (const t of pending) groups.push({ char: null, tokens: [t] }); pending = []; };
    for (let i = 0; i < res.ids.length; i++) {
      const bytes = res.bytes.subarray(at, at + res.lens[i]);
      at += res.lens[i];
      const id = res.ids[i];
      if (!texts.has(id)) texts.set(id, decode(bytes));
      const t = { i, id, bytes, text: texts.get(id) };
      if (!pending.length && t.text !== null) { groups.push({ char: null, tokens: [t] }); continue; }
      pending.push(t);
      const buf = concat(pending.map((p) => p.bytes));
      const whole = decode(buf);
      if (whole === null) {
        if (!incomplete(buf) || pending.length >= MAX_CHAR_PIECES) flush();
        continue;
      }
      if (pending.length === 1) { flush(); continue; }
      let shown = show(whole, buf);
      if (MARK.test(shown)) shown = "\u25cc" + shown;   // a mark drawn on a dotted circle
      groups.push({ char: shown, tokens: pending, codepoints: Array.from(whole).filter((c) => !/\s/.test(c))
        .map((c) => "U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")).join(" ") });
      pending = [];
    }
    flush();
    return groups;
  }

  function concat(parts) {
    let n = 0;
    for (const p of parts) n += p.length;
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  // --- drawing one column ------------------------------------------------------------------------

  /* Replace only what changed: the elements of `keys` that differ from the last drawing's, between
   * the common start and the common end (typing changes a few tokens, not the whole list).
   * `state` = {keys, els}; make(k) builds the element of new item k. */
  function patch(container, state, keys, make) {
    const old = state.keys;
    let head = 0;
    while (head < old.length && head < keys.length && old[head] === keys[head]) head++;
    let tail = 0;
    while (tail < old.length - head && tail < keys.length - head
           && old[old.length - 1 - tail] === keys[keys.length - 1 - tail]) tail++;
    const before = state.els[old.length - tail] || null;   // the first kept element of the end
    for (let k = head; k < old.length - tail; k++) state.els[k].remove();
    const made = [];
    const frag = document.createDocumentFragment();
    for (let k = head; k < keys.length - tail; k++) { const el = make(k); made.push(el); frag.appendChild(el); }
    container.insertBefore(frag, before);
    state.els = state.els.slice(0, head).concat(made, state.els.slice(old.length - tail));
    state.keys = keys;
  }

  function chip(t, label) {
    const el = document.createElement("span");
    el.className = "atlas-tok";
    el.setAttribute("role", "listitem");
    el.tabIndex = -1;
    el.dataset.id = t.id;
    const info = "id " + t.id + " \u00b7 bytes " + (hex(t.bytes) || "none");
    el.textContent = show(t.text, t.bytes, t.id);
    el.title = info;
    el.setAttribute("aria-label", label + ", " + info);
    return el;
  }

  function groupElement(g) {
    if (g.char === null) {
      const t = g.tokens[0];
      return chip(t, t.text === null ? "byte piece" : show(t.text, t.bytes, t.id));
    }
    const wrap = document.createElement("span");
    wrap.className = "atlas-char";
    wrap.title = g.tokens.length + " byte pieces that together form " + g.char + " (" + g.codepoints + ")";
    const ch = document.createElement("span");
    ch.className = "atlas-char-text";
    ch.setAttribute("aria-hidden", "true");
    ch.textContent = g.char;
    const pieces = document.createElement("span");
    pieces.className = "atlas-char-pieces";
    g.tokens.forEach((t, k) => pieces.appendChild(
      chip(t, "byte piece " + (k + 1) + " of " + g.tokens.length + " of " + g.char)));
    wrap.append(ch, pieces);
    return wrap;
  }

  function draw(col) {
    const res = col.result;
    const groups = chipGroups(res, col.texts);
    const keys = groups.map((g) => g.tokens.map((t) => t.id).join(" "));
    patch(col.chips, col.drawn, keys, (k) => groupElement(groups[k]));
    // One tab stop per column (the arrow keys move along): the first chip, unless one was chosen.
    const first = col.chips.querySelector(".atlas-tok");
    if (first && !col.chips.querySelector(".atlas-tok[tabindex='0']")) first.tabIndex = 0;
    const n = res.ids.length;
    const chars = Array.from(text).length;
    const bytes = utf8.encode(text).length;
    const per = (x) => (n ? (x / n).toFixed(2) : "\u2013");
    col.counts.replaceChildren(
      count(n, "tokens"), " tokens \u00b7 ", count(per(chars), "chars-per-token"),
      " characters per token \u00b7 ", count(per(bytes), "bytes-per-token"), " bytes per token");
    col.el.setAttribute("aria-busy", "false");
    if (!firstShown) { firstShown = true; performance.mark("atlas-tokenize-first"); }
  }

  function count(value, kind) {
    const el = document.createElement("strong");
    el.className = "atlas-count";
    el.dataset.count = kind;
    el.textContent = value;
    return el;
  }

  // --- where the tokenizers cut the text alike ---------------------------------------------------

  function drawBoundaries() {
    const shownCols = columns.filter((c) => c.result && c.shown === seq);
    if (shownCols.length < 2 || !bounds) return;
    const chars = Array.from(text);
    const charAt = new Map();   // byte offset of a character's start -> its index
    let b = 0;
    chars.forEach((c, k) => { charAt.set(b, k); b += utf8.encode(c).length; });
    const whole = utf8.encode(text);
    const cuts = new Map();     // character index -> the models that cut there
    const compared = [];
    const skipped = [];
    for (const col of shownCols) {
      const res = col.result;
      if (res.bytes.length !== whole.length || !res.bytes.every((x, k) => x === whole[k])) {
        skipped.push(col.name);   // its normalizer changed the text: offsets do not line up
        continue;
      }
      compared.push(col.name);
      let at = 0;
      for (let i = 0; i < res.lens.length - 1; i++) {
        at += res.lens[i];
        const k = charAt.get(at);
        if (k === undefined) continue;   // inside a character: a byte-piece boundary
        if (!cuts.has(k)) cuts.set(k, []);
        cuts.get(k).push(col.name);
      }
    }
    const sorted = Array.from(cuts.keys()).sort((x, y) => x - y);
    const shared = sorted.filter((k) => cuts.get(k).length === compared.length).length;
    const segs = [];
    let from = 0;
    for (const k of sorted.concat([chars.length])) {
      const who = k < chars.length ? cuts.get(k) : null;
      const cls = who === null ? "" : (who.length === compared.length ? "atlas-cut-all" : "atlas-cut-some");
      const seg = { text: chars.slice(from, k).join(""), cls,
                    title: who === null ? "" : (cls === "atlas-cut-all" ? "every tokenizer cuts here" : "only " + who.join(", ") + " cuts here") };
      segs.push(seg);
      from = k;
    }
    patch(bounds, boundsDrawn, segs.map((x) => x.cls + "\u0000" + x.title + "\u0000" + x.text), (k) => {
      const el = document.createElement("span");
      el.textContent = segs[k].text;
      if (segs[k].cls) { el.className = segs[k].cls; el.title = segs[k].title; }
      return el;
    });
    let summary = compared.length < 2 ? "Fewer than two tokenizers keep the text as typed; nothing to compare."
      : shared + " of the " + sorted.length + " places where a tokenizer cuts between characters are shared by " + (compared.length === 2 ? "both" : "all " + compared.length) + " (" + (sorted.length ? Math.round(100 * shared / sorted.length) : 100) + "%).";
    if (skipped.length) summary += " Not compared: " + skipped.join(", ") + " (its normalizer changed the text).";
    boundsSummary.textContent = summary;
  }

  // --- the workers ------------------------------------------------------------------------------

  function send(col, job) {
    col.busy = true;
    col.el.setAttribute("aria-busy", "true");
    col.worker.postMessage({ type: "encode", seq: job.seq, text: job.text });
  }

  function request() {
    seq += 1;
    root.dataset.seq = seq;
    root.setAttribute("aria-busy", "true");
    for (const col of columns) {
      if (!col.ready) continue;
      const job = { seq, text };
      if (col.busy) col.next = job; else send(col, job);
    }
  }

  function settled() {
    if (!columns.every((c) => c.failed || c.shown === seq)) return;
    const t0 = performance.now();
    drawBoundaries();
    root.dataset.boundariesMs = (performance.now() - t0).toFixed(1);
    root.dataset.shown = seq;
    root.setAttribute("aria-busy", "false");
    if (inputAt !== null) {
      const t1 = performance.now();
      void root.offsetHeight;   // style and layout of the new chips count in the figure
      root.dataset.layoutMs = (performance.now() - t1).toFixed(1);
      root.dataset.updateMs = (performance.now() - inputAt).toFixed(1);
      inputAt = null;
    }
    if (columns.every((c) => c.ready || c.failed) && !performance.getEntriesByName("atlas-tokenize-all").length) {
      performance.mark("atlas-tokenize-all");
    }
  }

  function onMessage(col, msg) {
    if (msg.type === "ready") {
      col.ready = true;
      col.el.dataset.loadMs = msg.ms.toFixed(0);
      col.el.dataset.fetchMs = msg.fetched.toFixed(0);
      if (columns.every((c) => c.ready || c.failed)) say(readyMessage(), text.length >= max);
      send(col, { seq, text });
    } else if (msg.type === "tokens") {
      col.busy = false;
      if (inputAt !== null) col.el.dataset.arrivedMs = (performance.now() - inputAt).toFixed(1);
      if (col.next) { const job = col.next; col.next = null; send(col, job); }
      if (msg.seq !== seq) return;   // a newer text is on its way
      col.result = msg;
      col.shown = msg.seq;
      const t0 = performance.now();
      draw(col);
      col.el.dataset.encodeMs = msg.ms.toFixed(1);             // in the worker
      col.el.dataset.drawMs = (performance.now() - t0).toFixed(1);  // chips and counts
      settled();
    } else if (msg.type === "error") {
      fail(col, msg.message);
    }
  }

  function fail(col, message) {
    col.failed = true;
    col.busy = false;
    col.el.setAttribute("aria-busy", "false");
    col.counts.textContent = "";
    const p = document.createElement("p");
    p.className = "atlas-error";
    p.textContent = "Could not load this tokenizer (" + message + ").";
    col.chips.replaceChildren(p);
    say("A tokenizer could not be loaded: " + col.name + ".", true);
    settled();
  }

  function readyMessage() {
    return text.length >= max ? tooLong() : "";
  }

  function tooLong() {
    return "This page tokenizes at most " + max.toLocaleString("en") + " characters: the text stops there.";
  }

  // --- the text box and the address ------------------------------------------------------------

  function cut(value) {
    if (value.length <= max) return value;
    let end = max;
    const c = value.charCodeAt(end - 1);
    if (c >= 0xd800 && c <= 0xdbff) end -= 1;   // do not split a surrogate pair
    return value.slice(0, end);
  }

  function remember() {
    const url = new URL(window.location.href);
    url.searchParams.set("text", text);
    history.replaceState(history.state, "", url.href);
    if (embedLink) {
      const e = new URL(embedLink.dataset.href, document.baseURI);
      e.searchParams.set("text", text);
      embedLink.href = e.href;
    }
  }

  function onInput() {
    inputAt = performance.now();
    const value = box.value;
    text = cut(value);
    if (text !== value) box.value = text;
    const over = value.length >= max;
    say(over ? tooLong() : "", over);
    remember();
    request();
    root.dataset.inputMs = (performance.now() - inputAt).toFixed(1);
  }

  function onKey(event) {
    const chip = event.target.closest(".atlas-tok");
    if (!chip) return;
    const all = Array.from(event.currentTarget.querySelectorAll(".atlas-tok"));
    const k = all.indexOf(chip);
    const to = { ArrowRight: k + 1, ArrowDown: k + 1, ArrowLeft: k - 1, ArrowUp: k - 1, Home: 0, End: all.length - 1 }[event.key];
    if (to === undefined || to < 0 || to >= all.length) return;
    event.preventDefault();
    chip.tabIndex = -1;
    all[to].tabIndex = 0;
    all[to].focus();
  }

  function onPoint(col, event) {
    const chip = event.target.closest && event.target.closest(".atlas-tok");
    if (!chip) return;
    const i = Array.prototype.indexOf.call(col.chips.querySelectorAll(".atlas-tok"), chip);
    col.detail.textContent = "token #" + i + " \u00b7 " + chip.title;
  }

  const fromUrl = new URLSearchParams(window.location.search).get("text");
  if (fromUrl !== null) {
    box.value = cut(fromUrl);
    if (fromUrl.length > max) say(tooLong(), true);
  }
  text = box.value;
  remember();
  box.addEventListener("input", onInput);
  for (const col of columns) {
    col.chips.addEventListener("keydown", onKey);
    col.chips.addEventListener("focusin", (e) => onPoint(col, e));
    col.chips.addEventListener("mouseover", (e) => onPoint(col, e));
    try {
      col.worker = new Worker(abs(root.dataset.worker), { type: "module" });
      col.worker.onmessage = (e) => onMessage(col, e.data);
      col.worker.onerror = (e) => fail(col, e.message || "the worker did not start");
      col.worker.postMessage({ type: "load", library: abs(root.dataset.library), tokenizer: abs(col.el.dataset.tokenizer) });
    } catch (e) {
      fail(col, String(e && e.message || e));
    }
  }
  root.dataset.seq = seq;
  root.setAttribute("aria-busy", "true");
})();
