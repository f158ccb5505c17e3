/* Model Atlas attention heatmap of a prompt page: one head of one layer, cells on a canvas, every
 * query and key label as a DOM element (legible at any length: the heatmap grows with the
 * sequence and scrolls inside its own frame, it never shrinks its text). Hovering or focusing a
 * token (either axis, or a chip in the page's Tokens section) highlights its row and column and
 * shades the chips it attends to. A rule separates prompt from generated tokens.
 *
 * Loaded after attention-codec.js and before atlas.js (generator/layout.py PAGE_SCRIPTS); atlas.js
 * calls AtlasHeatmap.draw(box, page) when the box comes into view. `page` is what atlas.js shares:
 * getJSON, showError, markFirstChart, theme, onTheme, openHead. The box's data-attn is the URL
 * template of its per-head files (AtlasCodec.headUrl). */
(function () {
  "use strict";
  const CELL = 16;        // px per token: labels of 11 px type on 16 px lines never overlap

  // One head's file as a dense [T, T] row-major Float32Array (query q, key k at q * T + k; zero
  // above the diagonal), decoded by the shared codec (attention-codec.js). With hideFirst, key 0
  // is dropped and each row re-normalized over the rest (row 0 then has nothing left to show),
  // as AtlasCodec.headRows does.
  function headMatrix(file, hideFirst) {
    const csr = file._csr || (file._csr = AtlasCodec.decodeHead(file));
    return AtlasCodec.denseHead(csr, hideFirst);
  }

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

  // Paint a [T, T] matrix on a canvas at `cell` px per token (the canvas' own pixels; CSS may
  // scale it). Above the diagonal stays transparent.
  function paint(canvas, m, t, cell, theme) {
    const ratio = cell >= 4 ? (window.devicePixelRatio || 1) : 1;
    canvas.width = Math.round(t * cell * ratio);
    canvas.height = Math.round(t * cell * ratio);
    const ctx = canvas.getContext("2d");
    const ramp = rampOf(theme);
    if (cell === 1) {
      const img = ctx.createImageData(t, t);
      for (let q = 0; q < t; q++) {
        for (let k = 0; k <= q; k++) {
          const c = colour(ramp, m[q * t + k]), p = 4 * (q * t + k);
          img.data[p] = c[0]; img.data[p + 1] = c[1]; img.data[p + 2] = c[2]; img.data[p + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
      return;
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, t * cell, t * cell);
    for (let q = 0; q < t; q++) {
      for (let k = 0; k <= q; k++) {
        ctx.fillStyle = css(colour(ramp, m[q * t + k]));
        ctx.fillRect(k * cell, q * cell, cell - (cell > 6 ? 1 : 0), cell - (cell > 6 ? 1 : 0));
      }
    }
  }

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
        const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1,
                       Home: -items.length, End: items.length }[event.key];
        if (step === undefined) return;
        event.preventDefault();
        items[Math.max(0, Math.min(items.length - 1, i + step))].focus();
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

  class Heatmap {
    constructor(box, page, tokens) {
      this.box = box;
      this.page = page;
      this.tokens = tokens;
      this.t = tokens.length;
      this.nPrompt = tokens.filter((x) => !x.generated).length;
      this.chart = box.querySelector(".atlas-chart");
      this.layerSel = box.querySelector(".atlas-layer");
      this.headSel = box.querySelector(".atlas-head");
      this.sink = box.querySelector(".atlas-sink");
      this.chips = chipsOf(box.dataset.model);
      this.active = null;
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
      this.canvas.style.width = size;
      this.canvas.style.height = size;
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
      this.qLabels = [];
      this.kLabels = [];
      this.tokens.forEach((tok, i) => {
        for (const [list, holder, axis] of [[this.qLabels, queries, "query"],
                                            [this.kLabels, keys, "key"]]) {
          const label = el("span", "atlas-heat-label" + (tok.generated ? " atlas-heat-gen" : ""),
                           tok.label);
          label.dataset.i = String(i);
          label.title = tok.label + (tok.generated ? " (generated)" : "") + " · " + axis;
          label.setAttribute("role", "button");
          if (i === this.nPrompt && i > 0) label.classList.add("atlas-heat-first-gen");
          list.push(label);
          holder.append(label);
        }
      });
      grid.append(corner, keys, queries, plot);
      frame.append(grid, this.tip);
      const legend = el("div", "atlas-heat-legend");
      legend.innerHTML = '<span>weight 0</span><span class="atlas-heat-ramp"></span><span>1</span>' +
        (this.nPrompt < t ? '<span class="atlas-heat-legend-rule"></span><span>generated tokens ' +
         "follow the rule (labels in italics)</span>" : "");
      this.legend = legend;
      this.chart.replaceChildren(frame, legend);
      this.frame = frame;

      roving(this.qLabels, (i) => this.select(i, i));
      roving(this.kLabels, (i) => this.select(i, i));
      for (const list of [this.qLabels, this.kLabels]) {
        list.forEach((label, i) => label.addEventListener("mouseenter", () => this.select(i, i)));
      }
      this.chips.forEach((chip, i) => {
        if (!chip || chip.dataset.heatBound) return;
        chip.dataset.heatBound = "true";
        chip.addEventListener("mouseenter", () => this.select(i, i));
        chip.addEventListener("focus", () => this.select(i, i));
        chip.addEventListener("mouseleave", () => this.clear());
        chip.addEventListener("blur", () => this.clear());
      });
      if (this.chips.length) roving(this.chips.filter(Boolean), () => {});
      this.canvas.addEventListener("mousemove", (e) => {
        const r = this.canvas.getBoundingClientRect();
        const k = Math.floor((e.clientX - r.left) / CELL), q = Math.floor((e.clientY - r.top) / CELL);
        if (q < 0 || q >= t || k < 0 || k > q) { this.clear(); return; }
        this.select(q, k, e);
      });
      grid.addEventListener("mouseleave", () => this.clear());
      grid.addEventListener("focusout", (e) => { if (!grid.contains(e.relatedTarget)) this.clear(); });
    }

    // Highlight row q and column k; shade the chips by what q attends to; a tooltip on cells.
    select(q, k, event) {
      if (!this.matrix) return;
      const t = this.t;
      this.active = [q, k];
      this.row.style.top = q * CELL + "px";
      this.row.style.display = "block";
      this.col.style.left = k * CELL + "px";
      this.col.style.display = "block";
      this.box.dataset.activeQuery = String(q);
      this.box.dataset.activeKey = String(k);
      for (const [list, i] of [[this.qLabels, q], [this.kLabels, k]]) {
        list.forEach((x) => x.classList.remove("atlas-heat-on"));
        list[i].classList.add("atlas-heat-on");
      }
      let top = 0;
      for (let j = 0; j <= q; j++) top = Math.max(top, this.matrix[q * t + j]);
      this.chips.forEach((chip, j) => {
        if (!chip) return;
        const w = j <= q ? this.matrix[q * t + j] : 0;
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
          fmt(this.matrix[q * t + k]);
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
      for (const x of this.qLabels.concat(this.kLabels)) x.classList.remove("atlas-heat-on");
      this.chips.forEach((chip) => {
        if (!chip) return;
        chip.style.removeProperty("--attn");
        delete chip.dataset.attn;
        chip.classList.remove("atlas-attn-strong", "atlas-attn-src");
      });
      if (this.chips.length) this.chips.find(Boolean).parentElement.classList.remove("atlas-attn-on");
    }

    async show() {
      const layerNo = this.layerSel.value, head = Number(this.headSel.value);
      const file = await this.page.getJSON(AtlasCodec.headUrl(this.box.dataset.attn, layerNo, head));
      if (file.length !== this.t) {
        throw new Error("head file has " + file.length + " tokens, the token file " + this.t);
      }
      this.matrix = headMatrix(file, this.sink.checked);
      this.repaint();
      this.chart.dataset.layer = layerNo;
      this.chart.dataset.head = String(head);
      this.chart.dataset.rendered = "true";
      // The thumbnail of the head shown here is outlined ("every head at a glance").
      document.querySelectorAll('.atlas-thumbs[data-model="' + this.box.dataset.model +
                                '"] .atlas-thumb').forEach((b) => {
        b.classList.toggle("atlas-thumb-on", b.dataset.layer === layerNo &&
                           b.dataset.head === String(head));
      });
      if (this.active) this.select(this.active[0], this.active[1]);
    }

    repaint() {
      if (this.matrix) paint(this.canvas, this.matrix, this.t, CELL, this.page.theme());
      const ramp = rampOf(this.page.theme());
      this.legend.querySelector(".atlas-heat-ramp").style.background =
        "linear-gradient(to right, " + ramp.map(css).join(", ") + ")";
    }
  }

  async function draw(box, page) {
    const chart = box.querySelector(".atlas-chart");
    const data = await page.getJSON(box.dataset.src);
    const heat = new Heatmap(box, page, data.tokens);
    box.atlasHeatmap = heat;
    await heat.show();
    page.markFirstChart();
    for (const input of [heat.layerSel, heat.headSel, heat.sink]) {
      input.addEventListener("change", () => heat.show().catch((e) => page.showError(chart, e)));
    }
    page.onTheme(() => heat.repaint());
    return heat;
  }

  window.AtlasHeatmap = { draw: draw, headMatrix: headMatrix, paint: paint, CELL: CELL };
})();
