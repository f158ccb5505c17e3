/* Model Atlas attention heatmap of a prompt page: one head of one layer, at any prompt length.
 *
 * - The detail view: today's 16 px cells, every query and key label a DOM element (legible at
 *   any length: the grid grows with the sequence and scrolls inside its own frame, it never
 *   shrinks its text). Its canvas covers only the cells on screen and is redrawn as the frame
 *   scrolls: a canvas of T x 16 px per side goes blank past Chromium's limits (25,280 px at 790
 *   tokens and a pixel ratio of 2). What the frame shows is "the window".
 * - The overview (from OVERVIEW_FROM tokens on): the whole pattern in one small square, each pixel
 *   the largest weight of the tokens it covers (pooled by maximum, so one strong key stays
 *   visible), with the window drawn on it. Clicking or dragging on it, or its arrow keys, move the
 *   window; so does choosing a token anywhere on the page (the "atlas:position" event).
 * - Hovering or focusing a token (either axis, or a chip in the page's Tokens section) highlights
 *   its row and column and shades the chips it attends to. A rule separates prompt from generated
 *   tokens. Clicking a query row chooses that token for every view of the page.
 * - The URL carries the window (&win=Q0,K0: the first query row and key column shown) beside the
 *   model, layer and head that atlas.js writes; a page opened with it shows that window.
 *
 * Loaded after attention-codec.js and before atlas.js (generator/layout.py PAGE_SCRIPTS); atlas.js
 * calls AtlasHeatmap.draw(box, page) at load. `page` is what atlas.js shares: getJSON, getHead,
 * showError, markFirstChart, theme, onTheme, openHead. One head's file is fetched at a time
 * (`loadHead`). */
(function () {
  "use strict";
  const CELL = 16;            // px per token: labels of 11 px type on 16 px lines never overlap
  const OVERVIEW_FROM = 128;  // tokens: shorter patterns fit a scroll or two, with no overview
  const OVERVIEW_PX = 240;    // CSS px per side of the overview, at most (less in a narrow column)

  // --- one head's attention ----------------------------------------------------------------------
  // The data contract (attention-codec.js decodeHead): {layer, head, length: T, scale,
  // rowStart: Uint32Array(T + 1), keys, values}: the stored non-zero weights of each query row q at
  // rowStart[q] .. rowStart[q + 1] - 1, keys ascending, weight = value / scale.

  // Fetch and decode one head: its own file (the box's data-attn is the URL template of the
  // per-head files, AtlasCodec.headUrl), the only attention the heatmap fetches.
  async function loadHead(box, page, layer, head) {
    const file = await page.getHead(AtlasCodec.headUrl(box.dataset.attn, layer, head));
    return file._csr || (file._csr = AtlasCodec.decodeHead(file));
  }

  // A head as shown: with hideFirst, key 0 is dropped and each row re-normalized over the rest
  // (row 0 then has nothing left to show), as AtlasCodec.headRows does.
  class Pattern {
    constructor(csr, hideFirst) {
      const t = this.t = csr.length;
      this.csr = csr;
      this.hideFirst = hideFirst;
      this.factor = new Float32Array(t);     // weight = value * factor[q]
      for (let q = 0; q < t; q++) {
        if (!hideFirst) { this.factor[q] = 1 / csr.scale; continue; }
        let total = 0;
        for (let i = csr.rowStart[q]; i < csr.rowStart[q + 1]; i++) {
          if (csr.keys[i] !== 0) total += csr.values[i];
        }
        this.factor[q] = total > 0 ? 1 / total : 0;
      }
    }

    // The first stored entry of row q with key >= k (binary search).
    seek(q, k) {
      const keys = this.csr.keys;
      let lo = this.csr.rowStart[q], hi = this.csr.rowStart[q + 1];
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (keys[mid] < k) lo = mid + 1; else hi = mid;
      }
      return lo;
    }

    weight(q, k) {
      if (k > q || (this.hideFirst && k === 0)) return 0;
      const i = this.seek(q, k);
      return i < this.csr.rowStart[q + 1] && this.csr.keys[i] === k
        ? this.csr.values[i] * this.factor[q] : 0;
    }

    // Row q's weights on keys k0 .. k1 - 1 into out[k0 .. k1 - 1] (zeros where none is stored).
    rowInto(q, out, k0, k1) {
      out.fill(0, k0, k1);
      const { keys, values } = this.csr, end = this.csr.rowStart[q + 1], f = this.factor[q];
      for (let i = this.seek(q, k0); i < end && keys[i] < k1; i++) {
        if (!(this.hideFirst && keys[i] === 0)) out[keys[i]] = values[i] * f;
      }
      return out;
    }

    // The whole pattern as size x size pixels, as generator/overview.py makes the thumbnails:
    // each row scaled to its largest weight (a head that spreads its attention thin over 2,000
    // keys would otherwise be a blank square), then each pixel the largest value of its block of
    // tokens (block b covers tokens floor(b T / size) .. floor((b + 1) T / size) - 1), so that
    // one strong key stays visible.
    pooled(size) {
      const t = this.t, out = new Float32Array(size * size);
      const { keys, values, rowStart } = this.csr;
      const block = new Uint32Array(t);
      for (let b = 0, k = 0; b < size; b++) {
        const end = Math.floor(((b + 1) * t) / size);
        for (; k < end; k++) block[k] = b;
      }
      for (let q = 0; q < t; q++) {
        let top = 0;
        for (let i = rowStart[q]; i < rowStart[q + 1]; i++) {
          if (!(this.hideFirst && keys[i] === 0) && values[i] > top) top = values[i];
        }
        if (top === 0) continue;
        const row = block[q] * size;
        for (let i = rowStart[q]; i < rowStart[q + 1]; i++) {
          if (this.hideFirst && keys[i] === 0) continue;
          const p = row + block[keys[i]], w = values[i] / top;
          if (w > out[p]) out[p] = w;
        }
      }
      return out;
    }
  }

  // --- colours -----------------------------------------------------------------------------------
  // Colour ramps (weight 0..1 -> rgb), one per colour scheme of the page: light cells on a light
  // page, dark cells on a dark one, so weight 0 blends into the page either way.
  const RAMPS = {
    light: [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]],
    dark: [[30, 34, 48], [28, 62, 102], [33, 113, 181], [107, 174, 214], [222, 235, 247]],
  };
  function rampOf(theme) { return RAMPS[theme && theme.dark ? "dark" : "light"]; }
  function colour(ramp, w) {
    const x = Math.max(0, Math.min(1, w)) * (ramp.length - 1);
    const i = Math.min(Math.floor(x), ramp.length - 2), f = x - i;
    const a = ramp[i], b = ramp[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function css(rgb) { return "rgb(" + rgb.map(Math.round).join(",") + ")"; }
  // 256 steps of a ramp, as rgb triples and CSS strings (a weight w is step round(255 w)).
  function palette(theme) {
    const ramp = rampOf(theme), rgb = [], str = [];
    for (let i = 0; i < 256; i++) { rgb.push(colour(ramp, i / 255)); str.push(css(rgb[i])); }
    return { rgb: rgb, css: str };
  }
  const step = (w) => Math.round(Math.max(0, Math.min(1, w)) * 255);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Arrow keys move the focus along a list of items; only the current one is a tab stop.
  function roving(items, onFocus) {
    items.forEach((item, i) => {
      item.tabIndex = i === 0 ? 0 : -1;
      item.addEventListener("focus", () => {
        items.forEach((x) => { x.tabIndex = -1; });
        item.tabIndex = 0;
        onFocus(i);
      });
      item.addEventListener("keydown", (event) => {
        const move = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1,
                       Home: -items.length, End: items.length }[event.key];
        if (move === undefined) return;
        event.preventDefault();
        items[Math.max(0, Math.min(items.length - 1, i + move))].focus();
      });
    });
  }

  // The chips of the Tokens section for this model (one chip per token, data-i = its index).
  function chipsOf(model) {
    const holder = document.querySelector('[data-tokens-of="' + model + '"]');
    if (!holder) return [];
    const chips = [];
    holder.querySelectorAll(".atlas-tok[data-i]").forEach((c) => { chips[Number(c.dataset.i)] = c; });
    return chips;
  }

  function fmt(w) { return w >= 0.001 || w === 0 ? w.toFixed(3) : w.toExponential(1); }
  const count = (n) => n.toLocaleString("en");

  // The window asked for by the page's address: win=Q0,K0 (for this model, or for every model when
  // the address names none), else a position to centre on (pos), else null.
  function windowFromURL(model) {
    const q = new URLSearchParams(location.search);
    if (q.get("model") !== null && q.get("model") !== model) return null;
    const win = /^(\d+),(\d+)$/.exec(q.get("win") || "");
    if (win) return { q: Number(win[1]), k: Number(win[2]) };
    const pos = /^\d+$/.test(q.get("pos") || "") ? Number(q.get("pos")) : null;
    return pos === null ? null : { pos: pos };
  }

  class Heatmap {
    constructor(box, page, tokens) {
      this.box = box;
      this.page = page;
      this.model = box.dataset.model;
      this.tokens = tokens;
      this.followedAt = -Infinity;   // when the window last followed a token chosen elsewhere
      this.t = tokens.length;
      this.nPrompt = tokens.filter((x) => !x.generated).length;
      this.chart = box.querySelector(".atlas-chart");
      this.layerSel = box.querySelector(".atlas-layer");
      this.headSel = box.querySelector(".atlas-head");
      this.sink = box.querySelector(".atlas-sink");
      this.chips = chipsOf(this.model);
      this.active = null;
      this.pattern = null;
      this.rowBuf = new Float32Array(this.t);
      this.colours = palette(page.theme());
      this.build();
    }

    build() {
      const t = this.t, size = t * CELL + "px";
      const frame = el("div", "atlas-heat-frame");
      const grid = el("div", "atlas-heat");
      grid.style.gridTemplateColumns = "auto " + size;
      grid.style.gridTemplateRows = "auto " + size;
      const corner = el("div", "atlas-heat-corner");
      corner.innerHTML = "<span>query ↓</span><span>key →</span>";
      const keys = el("div", "atlas-heat-keys");
      const queries = el("div", "atlas-heat-queries");
      const plot = el("div", "atlas-heat-plot");
      plot.style.width = size;
      plot.style.height = size;
      this.canvas = el("canvas", "atlas-heat-canvas");
      this.canvas.setAttribute("aria-hidden", "true");
      this.row = el("div", "atlas-heat-row");
      this.col = el("div", "atlas-heat-col");
      this.tip = el("div", "atlas-heat-tip");
      plot.append(this.canvas, this.row, this.col);
      if (this.nPrompt < t) {
        // The rule between the prompt and the generated tokens, on both axes.
        const h = el("div", "atlas-heat-rule atlas-heat-rule-h");
        const v = el("div", "atlas-heat-rule atlas-heat-rule-v");
        h.style.top = this.nPrompt * CELL + "px";
        v.style.left = this.nPrompt * CELL + "px";
        h.title = v.title = "generated tokens follow";
        plot.append(h, v);
      }
      // The labels: every one of a short pattern; of a long one only those of the window and a
      // margin around it (4,096 labels took a second to lay out at 2,048 tokens), placed at their
      // rows and columns and renewed as the window moves (`syncLabels`).
      this.virtual = t >= OVERVIEW_FROM;
      this.axes = { query: queries, key: keys };
      this.labels = { query: new Map(), key: new Map() };
      this.stop = { query: 0, key: 0 };     // the one tab stop of each axis (roving tabindex)
      this.lit = { query: null, key: null };
      if (this.virtual) {
        // Room for the longest label, at most 10em as a label of a short pattern.
        const longest = Math.max(...this.tokens.map((x) => x.label.length));
        const room = "min(10em, " + (longest + 1) + "ch)";
        queries.classList.add("atlas-heat-virtual");
        keys.classList.add("atlas-heat-virtual");
        queries.style.width = "calc(" + room + " + 6px)";
        queries.style.height = size;
        keys.style.height = "calc(" + room + " + 4px)";
        keys.style.width = size;
      } else {
        for (const axis of ["query", "key"]) {
          const frag = document.createDocumentFragment();
          this.tokens.forEach((tok, i) => frag.append(this.makeLabel(axis, i)));
          this.axes[axis].append(frag);
        }
      }
      grid.append(corner, keys, queries, plot);
      frame.append(grid, this.tip);
      const legend = el("div", "atlas-heat-legend");
      legend.innerHTML = '<span>weight 0</span><span class="atlas-heat-ramp"></span><span>1</span>' +
        (this.nPrompt < t ? '<span class="atlas-heat-legend-rule"></span><span>generated tokens ' +
         "follow the rule (labels in italics)</span>" : "");
      this.legend = legend;
      this.frame = frame;
      this.grid = grid;
      this.plot = plot;
      this.overview = t >= OVERVIEW_FROM ? this.buildOverview() : null;
      this.chart.replaceChildren(...(this.overview ? [this.overview.holder] : []), frame, legend);

      for (const axis of ["query", "key"]) this.labelEvents(axis);
      this.chips.forEach((chip, i) => {
        if (!chip || chip.dataset.heatBound) return;
        chip.dataset.heatBound = "true";
        chip.addEventListener("mouseenter", () => this.select(i, i));
        chip.addEventListener("focus", () => this.select(i, i));
        chip.addEventListener("mouseleave", () => this.clear());
        chip.addEventListener("blur", () => this.clear());
      });
      if (this.chips.length) roving(this.chips.filter(Boolean), () => {});
      const cellAt = (e) => {
        const r = plot.getBoundingClientRect();
        return [Math.floor((e.clientY - r.top) / CELL), Math.floor((e.clientX - r.left) / CELL)];
      };
      plot.addEventListener("mousemove", (e) => {
        const [q, k] = cellAt(e);
        if (q < 0 || q >= t || k < 0 || k > q) { this.clear(); return; }
        this.select(q, k, e);
      });
      plot.addEventListener("click", (e) => {
        const [q, k] = cellAt(e);
        if (q >= 0 && q < t && k >= 0 && k <= q) this.choose(q);
      });
      grid.addEventListener("mouseleave", () => this.clear());
      grid.addEventListener("focusout", (e) => { if (!grid.contains(e.relatedTarget)) this.clear(); });

      let pending = false;
      frame.addEventListener("scroll", () => {
        if (pending) return;
        pending = true;
        requestAnimationFrame(() => { pending = false; this.drawWindow(); });
        // A scroll that follows a token chosen elsewhere names this model in the address only
        // if it is already the address's model (the reader chose in the other model's views).
        this.urlLater(performance.now() - this.followedAt > 200);
      }, { passive: true });
      if ("ResizeObserver" in window) {
        let width = 0;
        new ResizeObserver(() => {
          this.drawWindow();
          // A narrower column gets a smaller overview.
          if (this.overview && this.chart.clientWidth !== width) {
            width = this.chart.clientWidth;
            this.paintOverview();
          }
        }).observe(frame);
      }
      document.addEventListener("atlas:position", (e) => this.onPosition(e.detail || {}));
    }

    // --- the labels ----------------------------------------------------------------------------
    makeLabel(axis, i) {
      const tok = this.tokens[i];
      const label = el("span", "atlas-heat-label" + (tok.generated ? " atlas-heat-gen" : ""),
                       tok.label);
      label.dataset.i = String(i);
      label.title = tok.label + (tok.generated ? " (generated)" : "") + " · " + axis;
      label.setAttribute("role", "button");
      label.tabIndex = i === this.stop[axis] ? 0 : -1;
      if (i === this.nPrompt && i > 0) label.classList.add("atlas-heat-first-gen");
      if (i === this.lit[axis]) label.classList.add("atlas-heat-on");
      if (this.virtual) label.style[axis === "query" ? "top" : "left"] = i * CELL + "px";
      this.labels[axis].set(i, label);
      return label;
    }

    // The labels of the window and MARGIN more each side; the others go, except one that has
    // the focus.
    syncLabels(w) {
      const MARGIN = 16;
      for (const [axis, a, b] of [["query", w.q0, w.q1], ["key", w.k0, w.k1]]) {
        const from = Math.max(0, a - MARGIN), to = Math.min(this.t, b + MARGIN);
        const have = this.labels[axis], holder = this.axes[axis];
        for (const [i, label] of have) {
          if ((i < from || i >= to) && label !== document.activeElement) {
            label.remove();
            have.delete(i);
          }
        }
        const frag = document.createDocumentFragment();
        for (let i = from; i < to; i++) if (!have.has(i)) frag.append(this.makeLabel(axis, i));
        holder.append(frag);
      }
    }

    light(axis, i) {
      const was = this.labels[axis].get(this.lit[axis]);
      if (was) was.classList.remove("atlas-heat-on");
      this.lit[axis] = i;
      const now = i === null ? null : this.labels[axis].get(i);
      if (now) now.classList.add("atlas-heat-on");
    }

    // One axis's labels, through their holder: pointing or focusing lights a token; the arrow
    // keys, Home and End move along the axis (one tab stop per axis); a click or Enter on a query
    // label chooses that token for the whole page.
    labelEvents(axis) {
      const holder = this.axes[axis];
      const index = (e) => {
        const label = e.target.closest(".atlas-heat-label");
        return label && holder.contains(label) ? Number(label.dataset.i) : null;
      };
      holder.addEventListener("mouseover", (e) => {
        const i = index(e);
        if (i !== null) this.select(i, i);
      });
      holder.addEventListener("focusin", (e) => {
        const i = index(e);
        if (i === null) return;
        const old = this.labels[axis].get(this.stop[axis]);
        if (old) old.tabIndex = -1;
        this.stop[axis] = i;
        e.target.tabIndex = 0;
        this.select(i, i);
      });
      holder.addEventListener("keydown", (e) => {
        const i = index(e);
        if (i === null) return;
        if (e.key === "Enter" && axis === "query") { this.choose(i); return; }
        const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1,
                       Home: -this.t, End: this.t }[e.key];
        if (step === undefined) return;
        e.preventDefault();
        const j = Math.max(0, Math.min(this.t - 1, i + step));
        if (this.virtual) {
          // Bring the label into the window first: only the window's labels exist.
          const w = this.windowNow();
          if (axis === "query") this.reveal(j, w.k0, false); else this.reveal(w.q0, j, false);
          this.syncLabels(this.windowNow());
        }
        const next = this.labels[axis].get(j);
        if (next) next.focus({ preventScroll: this.virtual });
      });
      if (axis === "query") {
        holder.addEventListener("click", (e) => {
          const i = index(e);
          if (i !== null) this.choose(i);
        });
      }
    }

    // --- the window ----------------------------------------------------------------------------
    // Where the plot starts inside the frame's content (after the sticky query and key labels).
    plotOrigin() { return [this.plot.offsetLeft, this.plot.offsetTop]; }

    // The cells on screen: query rows q0 .. q1 - 1, key columns k0 .. k1 - 1.
    windowNow() {
      const f = this.frame, [x0, y0] = this.plotOrigin(), t = this.t;
      const k0 = Math.min(t, Math.floor(f.scrollLeft / CELL));
      const q0 = Math.min(t, Math.floor(f.scrollTop / CELL));
      const k1 = Math.min(t, Math.ceil((f.scrollLeft + f.clientWidth - x0) / CELL));
      const q1 = Math.min(t, Math.ceil((f.scrollTop + f.clientHeight - y0) / CELL));
      return { q0: q0, q1: Math.max(q0, q1), k0: k0, k1: Math.max(k0, k1) };
    }

    // Show query row q0 and key column k0 first (the frame clamps what lies past the end).
    moveWindow(q0, k0) {
      this.frame.scrollTop = Math.max(0, Math.round(q0)) * CELL;
      this.frame.scrollLeft = Math.max(0, Math.round(k0)) * CELL;
      this.drawWindow();
    }

    // Centre the window on query q and key k.
    centreOn(q, k) {
      const w = this.windowNow();
      this.moveWindow(q - (w.q1 - w.q0) / 2 + 0.5, k - (w.k1 - w.k0) / 2 + 0.5);
    }

    // Bring query q and key k into the window (its last row and column, cut by the frame, do not
    // count), moving it only if they are outside: to centre them, or (step by step, as the arrow
    // keys along an axis) by as little as it takes.
    reveal(q, k, centre = true) {
      const w = this.windowNow(), rows = w.q1 - w.q0, cols = w.k1 - w.k0;
      const place = (i, from, n) => {
        if (i >= from && (i < from + n - 1 || n <= 1)) return from;
        if (centre) return i - n / 2 + 0.5;
        return i < from ? i : i - n + 2;
      };
      const q0 = place(q, w.q0, rows), k0 = place(k, w.k0, cols);
      if (q0 !== w.q0 || k0 !== w.k0) this.moveWindow(q0, k0);
    }

    // Bring the row of token q into the window as a chosen token: the row in the middle, its own
    // key at the right edge with the keys before it (none after it: they would be empty).
    revealRow(q) {
      const w = this.windowNow(), rows = w.q1 - w.q0, cols = w.k1 - w.k0;
      const rowIn = q >= w.q0 && q < w.q1 - 1, keyIn = q >= w.k0 && q < w.k1 - 1;
      if (rowIn && keyIn) return;
      this.moveWindow(rowIn ? w.q0 : q - rows / 2 + 0.5, keyIn ? w.k0 : q - cols + 2);
    }

    // Paint the cells on screen (never more: the canvas is the window's size) and the window's
    // frame on the overview.
    drawWindow() {
      const w = this.windowNow(), c = this.canvas;
      this.box.dataset.window = [w.q0, w.k0, w.q1, w.k1].join(",");
      if (this.virtual) this.syncLabels(w);
      if (this.overview) this.placeWindowMark(w);
      if (!this.pattern) return;
      const ratio = window.devicePixelRatio || 1;
      const width = (w.k1 - w.k0) * CELL, height = (w.q1 - w.q0) * CELL;
      c.style.left = w.k0 * CELL + "px";
      c.style.top = w.q0 * CELL + "px";
      c.style.width = width + "px";
      c.style.height = height + "px";
      c.width = Math.round(width * ratio);
      c.height = Math.round(height * ratio);
      const ctx = c.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      const colours = this.colours.css, row = this.rowBuf;
      for (let q = w.q0; q < w.q1; q++) {
        const last = Math.min(q + 1, w.k1);
        if (last <= w.k0) continue;
        this.pattern.rowInto(q, row, w.k0, last);
        for (let k = w.k0; k < last; k++) {
          ctx.fillStyle = colours[step(row[k])];
          ctx.fillRect((k - w.k0) * CELL, (q - w.q0) * CELL, CELL - 1, CELL - 1);
        }
      }
      c.dataset.window = this.box.dataset.window;
    }

    // The window in the address (win=Q0,K0), written a moment after it stops moving, with the
    // model, layer and head it belongs to. The window of an address that opened the page is
    // not written again.
    urlLater(mine = true) {
      clearTimeout(this.urlTimer);
      this.urlTimer = setTimeout(() => this.writeURL(mine), 250);
    }

    writeURL(mine) {
      const q = new URLSearchParams(location.search);
      if (!mine && q.get("model") !== this.model) return;
      const w = this.windowNow(), win = w.q0 + "," + w.k0;
      const had = q.get("win") || "0,0";
      if (had === win && (!mine || q.get("model") === this.model)) return;
      q.set("model", this.model);
      q.set("layer", this.layerSel.value);
      q.set("head", this.headSel.value);
      if (win === "0,0") q.delete("win"); else q.set("win", win);
      const hash = /(^|&)(layer|head|model|win)=/.test(location.hash.slice(1)) ? "" : location.hash;
      // win=Q0,K0 with its comma as such (URLSearchParams writes %2C; a comma is fine in a query).
      history.replaceState(history.state, "",
                           location.pathname + "?" + q.toString().replace(/%2C/g, ",") + hash);
    }

    // --- the overview --------------------------------------------------------------------------
    buildOverview() {
      const holder = el("div", "atlas-heat-over");
      const box = el("div", "atlas-heat-over-box");
      const canvas = el("canvas", "atlas-heat-over-canvas");
      const mark = el("div", "atlas-heat-window");
      box.tabIndex = 0;
      box.setAttribute("role", "group");
      box.setAttribute("aria-label", "the whole pattern, " + count(this.t) + " tokens: click, " +
                       "drag or use the arrow keys to move the window shown below");
      box.title = "the whole pattern: click or drag to move the window below";
      box.append(canvas, mark);
      const caption = el("p", "atlas-heat-over-caption");
      holder.append(box, caption);
      const o = { holder: holder, box: box, canvas: canvas, mark: mark, caption: caption, side: 0 };

      const toTokens = (e) => {
        const r = box.getBoundingClientRect();
        return [((e.clientY - r.top) / r.height) * this.t, ((e.clientX - r.left) / r.width) * this.t];
      };
      let dragging = false;
      box.addEventListener("pointerdown", (e) => {
        dragging = true;
        box.setPointerCapture(e.pointerId);
        box.focus({ preventScroll: true });
        this.centreOn(...toTokens(e));
        e.preventDefault();
      });
      box.addEventListener("pointermove", (e) => { if (dragging) this.centreOn(...toTokens(e)); });
      for (const end of ["pointerup", "pointercancel"]) {
        box.addEventListener(end, () => { dragging = false; });
      }
      // Arrows move by a quarter of the window, with Shift by a whole window; Page Up and Page
      // Down by a window of rows; Home and End to the two ends of the diagonal (the first tokens,
      // the last tokens with the keys just before them).
      box.addEventListener("keydown", (e) => {
        const w = this.windowNow(), rows = w.q1 - w.q0, cols = w.k1 - w.k0;
        const by = (n) => Math.max(1, Math.floor(e.shiftKey ? n : n / 4));
        const moves = {
          ArrowDown: [by(rows), 0], ArrowUp: [-by(rows), 0],
          ArrowRight: [0, by(cols)], ArrowLeft: [0, -by(cols)],
          PageDown: [rows, 0], PageUp: [-rows, 0],
          Home: [-this.t, -this.t], End: [this.t, this.t],
        };
        const m = moves[e.key];
        if (!m) return;
        e.preventDefault();
        this.moveWindow(w.q0 + m[0], w.k0 + m[1]);
      });
      return o;
    }

    // Pool the pattern to the overview's pixels (its side in CSS px times the pixel ratio, or one
    // pixel per token when the pattern has fewer) and paint it, the lower triangle only.
    paintOverview() {
      const o = this.overview;
      if (!o || !this.pattern) return;
      const side = Math.max(80, Math.min(OVERVIEW_PX, this.chart.clientWidth || OVERVIEW_PX));
      const ratio = window.devicePixelRatio || 1;
      const n = Math.min(this.t, Math.round(side * ratio));
      o.side = side;
      o.box.style.width = o.box.style.height = side + "px";
      o.canvas.width = o.canvas.height = n;
      const pooled = this.pattern.pooled(n), rgb = this.colours.rgb;
      const ctx = o.canvas.getContext("2d"), img = ctx.createImageData(n, n);
      for (let y = 0; y < n; y++) {
        for (let x = 0; x <= y; x++) {
          const c = rgb[step(pooled[y * n + x])], p = 4 * (y * n + x);
          img.data[p] = c[0]; img.data[p + 1] = c[1]; img.data[p + 2] = c[2]; img.data[p + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
      if (this.nPrompt < this.t) {
        // The prompt's end, as on the detail view's rule.
        const at = (this.nPrompt / this.t) * n;
        ctx.strokeStyle = getComputedStyle(o.box).getPropertyValue("--md-accent-fg-color").trim()
          || "#ff6e42";
        ctx.lineWidth = Math.max(1, ratio);
        ctx.setLineDash([3 * ratio, 3 * ratio]);
        ctx.beginPath();
        ctx.moveTo(0, at); ctx.lineTo(at, at); ctx.lineTo(at, n);
        ctx.stroke();
      }
      o.canvas.dataset.pooled = String(n);
      this.placeWindowMark(this.windowNow());
    }

    placeWindowMark(w) {
      const o = this.overview, s = o.side / this.t;
      if (!o.side) return;
      // Never smaller than 8 px, so that it can be seen and grabbed at any length.
      const width = Math.max(8, (w.k1 - w.k0) * s), height = Math.max(8, (w.q1 - w.q0) * s);
      o.mark.style.left = Math.min(o.side - width, w.k0 * s) + "px";
      o.mark.style.top = Math.min(o.side - height, w.q0 * s) + "px";
      o.mark.style.width = width + "px";
      o.mark.style.height = height + "px";
      const per = this.t / o.canvas.width;
      o.caption.textContent = "The whole pattern, " + count(this.t) + " tokens: each row " +
        "scaled to its strongest weight" + (per > 1.05 ? ", each pixel the strongest of the ~" +
        per.toFixed(1) + " × " + per.toFixed(1) + " token pairs it covers" : "") + ". " +
        "The frame marks the window shown below: queries " + w.q0 + "–" +
        Math.max(w.q0, w.q1 - 1) + ", keys " + w.k0 + "–" + Math.max(w.k0, w.k1 - 1) + ".";
    }

    // --- choosing and highlighting -------------------------------------------------------------
    // The reader picked query row q here: every view of the page follows (atlas.js, the contract
    // of generator/layout.py head_query's pos).
    // The page's own `choose` (atlas.js) records the position, writes it into the URL and
    // dispatches the event; a page without it gets the event alone.
    choose(q) {
      if (this.page.choose) { this.page.choose(this.model, q, "heatmap"); return; }
      document.dispatchEvent(new CustomEvent("atlas:position",
        { detail: { pos: q, source: "heatmap", model: this.model } }));
    }

    // A position of another model's tokens becomes the token of this model that covers the same
    // text (atlas.js positionFor); without that mapping it is left to that model's views.
    onPosition(detail) {
      let pos = Number(detail.pos);
      if (detail.model && detail.model !== this.model) {
        pos = this.page.positionFor ? this.page.positionFor(this.model) : null;
      }
      if (pos === null || !(pos >= 0)) return;
      const q = Math.min(this.t - 1, Math.floor(pos));
      this.active = [q, q];
      if (detail.source !== "heatmap") {
        this.followedAt = performance.now();
        this.revealRow(q);
      }
      if (this.pattern) this.select(q, q);
    }

    // Highlight row q and column k; shade the chips by what q attends to; a tooltip on cells.
    select(q, k, event) {
      if (!this.pattern) return;
      this.active = [q, k];
      this.row.style.top = q * CELL + "px";
      this.row.style.display = "block";
      this.col.style.left = k * CELL + "px";
      this.col.style.display = "block";
      this.box.dataset.activeQuery = String(q);
      this.box.dataset.activeKey = String(k);
      this.light("query", q);
      this.light("key", k);
      const weights = this.pattern.rowInto(q, this.rowBuf, 0, q + 1);
      let top = 0;
      for (let j = 0; j <= q; j++) top = Math.max(top, weights[j]);
      this.chips.forEach((chip, j) => {
        if (!chip) return;
        const w = j <= q ? weights[j] : 0;
        // Shaded relative to the row's largest weight, so a diffuse head still reads.
        const a = top > 0 ? w / top : 0;
        chip.style.setProperty("--attn", a.toFixed(3));
        chip.dataset.attn = w.toFixed(4);
        chip.classList.toggle("atlas-attn-strong", a > 0.55);
        chip.classList.toggle("atlas-attn-src", j === q);
      });
      if (this.chips.length) this.chips.find(Boolean).parentElement.classList.add("atlas-attn-on");
      if (event) {
        const r = this.frame.getBoundingClientRect();
        this.tip.textContent = this.tokens[q].label + " → " + this.tokens[k].label + ": " +
          fmt(this.pattern.weight(q, k));
        this.tip.style.left = event.clientX - r.left + this.frame.scrollLeft + 14 + "px";
        this.tip.style.top = event.clientY - r.top + this.frame.scrollTop + 14 + "px";
        this.tip.style.display = "block";
      } else this.tip.style.display = "none";
    }

    clear() {
      this.active = null;
      this.row.style.display = this.col.style.display = this.tip.style.display = "none";
      delete this.box.dataset.activeQuery;
      delete this.box.dataset.activeKey;
      this.light("query", null);
      this.light("key", null);
      this.chips.forEach((chip) => {
        if (!chip) return;
        chip.style.removeProperty("--attn");
        delete chip.dataset.attn;
        chip.classList.remove("atlas-attn-strong", "atlas-attn-src");
      });
      if (this.chips.length) this.chips.find(Boolean).parentElement.classList.remove("atlas-attn-on");
    }

    // --- drawing a head ------------------------------------------------------------------------
    async show() {
      const layerNo = this.layerSel.value, head = Number(this.headSel.value);
      const hideFirst = this.sink.checked;
      const csr = await loadHead(this.box, this.page, layerNo, head);
      if (csr.length !== this.t) {
        throw new Error("attention file has " + csr.length + " tokens, the token file " + this.t);
      }
      // A later choice may have been made while this one loaded: only the latest is drawn.
      if (layerNo !== this.layerSel.value || head !== Number(this.headSel.value) ||
          hideFirst !== this.sink.checked) return;
      this.pattern = new Pattern(csr, hideFirst);
      if (this.active) this.revealRow(this.active[0]);
      this.repaint();
      this.chart.dataset.layer = layerNo;
      this.chart.dataset.head = String(head);
      this.chart.dataset.rendered = "true";
      // The thumbnail of the head shown here is outlined ("every head at a glance").
      document.querySelectorAll('.atlas-thumbs[data-model="' + this.model +
                                '"] .atlas-thumb').forEach((b) => {
        b.classList.toggle("atlas-thumb-on", b.dataset.layer === layerNo &&
                           b.dataset.head === String(head));
      });
      if (this.active) this.select(this.active[0], this.active[1]);
      this.writeURL(false);
    }

    repaint() {
      this.colours = palette(this.page.theme());
      this.drawWindow();
      this.paintOverview();
      const ramp = rampOf(this.page.theme());
      this.legend.querySelector(".atlas-heat-ramp").style.background =
        "linear-gradient(to right, " + ramp.map(css).join(", ") + ")";
    }
  }

  // The heatmaps of a page are drawn one after another, each fetching its files in its turn: the
  // first shows sooner, with half the bytes (both models' files at once took the whole budget).
  let turn = Promise.resolve();
  function draw(box, page) {
    const mine = turn.then(() => drawNow(box, page));
    turn = mine.catch(() => undefined);
    return mine;
  }

  // The labels file (generator/layout.py attention_labels): {labels, prompt_tokens}.
  function tokensOf(file) {
    return file.labels.map((label, i) => ({ label: label, generated: i >= file.prompt_tokens }));
  }

  async function drawNow(box, page) {
    const chart = box.querySelector(".atlas-chart");
    const heat = new Heatmap(box, page, tokensOf(await page.getJSON(box.dataset.src)));
    box.atlasHeatmap = heat;
    let asked = windowFromURL(heat.model);
    // A position chosen before this heatmap listened (the address's pos for the other model, or
    // a token chosen while the heatmaps before it drew): this model's token for the same text.
    if (!asked && page.chosen && page.chosen()) {
      const pos = page.positionFor(heat.model);
      if (pos !== null && pos >= 0) asked = { pos: pos };
    }
    if (asked && asked.pos !== undefined) {
      const q = Math.min(heat.t - 1, asked.pos);
      heat.active = heat.active || [q, q];
    } else if (asked) heat.moveWindow(asked.q, asked.k);
    await heat.show();
    page.markFirstChart();
    for (const input of [heat.layerSel, heat.headSel, heat.sink]) {
      input.addEventListener("change", () => heat.show().catch((e) => page.showError(chart, e)));
    }
    page.onTheme(() => heat.repaint());
    return heat;
  }

  window.AtlasHeatmap = { draw: draw, CELL: CELL, OVERVIEW_FROM: OVERVIEW_FROM, Pattern: Pattern,
                          rampOf: rampOf, colour: colour };
})();
