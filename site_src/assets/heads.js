/* Model Atlas heads: the model page's scatter of every head, and the head pages' first-chart mark.
 *
 * Scatter: a .atlas-scatter holder names the head atlas's data file (data-atlas: one row per head,
 * its metrics averaged over the prompts), the URL pattern of the head pages (data-head-url, with
 * {layer} and {head}) and the planted heads (data-planted, names like L2.H1). Three <select>s
 * choose the x axis, the y axis and the colour; every point is an SVG link to that head's page,
 * so it opens with a click or with the keyboard, and names its values in its tooltip.
 *
 * Head pages draw their charts into the HTML at render time (generator/headviews.py): the mark
 * that benchmarks/page_bench.py waits for is set at the page's first paint. */
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const M = { left: 58, right: 16, top: 14, bottom: 46 };

  // A head page's charts are in its HTML: they are drawn with the page's first paint, which
  // is when the first chart appears (this script itself runs later, after the theme's bundle).
  // (Only a head page's title: prompt pages carry data-head-page on their links to head pages.)
  if (document.querySelector("h1.atlas-head-title") && window.performance && performance.mark) {
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    try {
      performance.mark("atlas-first-chart", paint ? { startTime: paint.startTime } : undefined);
    } catch (err) {
      performance.mark("atlas-first-chart");   // a browser without User Timing level 3
    }
  }

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function extent(values) {
    const v = values.filter((x) => x !== null && Number.isFinite(x));
    if (!v.length) return [0, 1];
    let lo = Math.min(...v), hi = Math.max(...v);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.04;
    return [lo - pad, hi + pad];
  }

  function ticks(lo, hi, n) {
    const step0 = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) out.push(+t.toFixed(10));
    return out;
  }

  const fmt = (x) => (x === null || !Number.isFinite(x) ? "–" : x.toFixed(3));

  // Colour: light to dark blue in the light scheme, dark to light in the dark one (so the
  // strongest value always stands out from the page); grey where the value is undefined.
  function colour(t, dark) {
    if (t === null) return "rgba(128,128,128,0.45)";
    const l = dark ? 30 + 50 * t : 85 - 55 * t;
    return "hsl(225, 70%, " + l.toFixed(0) + "%)";
  }

  function draw(box, rows) {
    const plot = box.querySelector(".atlas-scatter-plot");
    // Drawn at the width it is shown at, so that its text keeps its size on a phone.
    const W = Math.max(300, Math.min(720, plot.clientWidth || 640));
    const H = Math.round(Math.max(300, W * 0.62));
    const pick = (axis) => box.querySelector('select[data-axis="' + axis + '"]');
    const label = (axis) => pick(axis).selectedOptions[0].textContent;
    const [xm, ym, cm] = ["x", "y", "color"].map((a) => pick(a).value);
    const planted = new Set((box.dataset.planted || "").split(" ").filter(Boolean));
    const dark = document.body.getAttribute("data-md-color-scheme") === "slate";
    const [x0, x1] = extent(rows.map((r) => r[xm]));
    const [y0, y1] = extent(rows.map((r) => r[ym]));
    const cv = rows.map((r) => r[cm]).filter((v) => v !== null && Number.isFinite(v));
    const c0 = cv.length ? Math.min(...cv) : 0, c1 = cv.length ? Math.max(...cv) : 1;
    const sx = (v) => M.left + (W - M.left - M.right) * (v - x0) / (x1 - x0);
    const sy = (v) => H - M.bottom - (H - M.top - M.bottom) * (v - y0) / (y1 - y0);
    const svg = el("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
      "aria-label": "every head: " + label("x") + " against " + label("y") + ", coloured by " +
        label("color") });
    svg.classList.add("atlas-scatter-svg");
    const axes = el("g", { fill: "currentColor", "font-size": 11 }, svg);
    for (const t of ticks(x0, x1, 6)) {
      el("line", { x1: sx(t), x2: sx(t), y1: M.top, y2: H - M.bottom, stroke: "currentColor",
        "stroke-opacity": 0.12 }, axes);
      el("text", { x: sx(t), y: H - M.bottom + 14, "text-anchor": "middle" }, axes).textContent = t;
    }
    for (const t of ticks(y0, y1, 6)) {
      el("line", { x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t), stroke: "currentColor",
        "stroke-opacity": 0.12 }, axes);
      el("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end" }, axes).textContent = t;
    }
    el("text", { x: (M.left + W - M.right) / 2, y: H - 8, "text-anchor": "middle",
      "font-weight": "bold" }, axes).textContent = label("x");
    el("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
      transform: "rotate(-90 14 " + (M.top + H - M.bottom) / 2 + ")", "font-weight": "bold" },
    axes).textContent = label("y");
    // Points: the planted ones last, so they are drawn on top.
    const order = rows.slice().sort((a, b) => planted.has(a.name) - planted.has(b.name));
    // The planted heads' labels: one drawn where another already is moves down a line.
    const placed = [];   // [left, right, baseline] of each label drawn
    const labelY = (left, right, y) => {
      let at = y;
      for (let tries = 0; tries < 8 && placed.some(([l, r, b]) => l < right && left < r &&
                                                   Math.abs(b - at) < 13); tries++) at += 14;
      placed.push([left, right, at]);
      return at;
    };
    for (const r of order) {
      if (r[xm] === null || r[ym] === null) continue;
      const href = box.dataset.headUrl.replace("{layer}", r.layer).replace("{head}", r.head);
      const link = el("a", { href: href }, svg);
      link.classList.add("atlas-scatter-point");
      const t = r[cm] === null ? null : (c1 > c0 ? (r[cm] - c0) / (c1 - c0) : 0.5);
      const isPlanted = planted.has(r.name);
      el("title", {}, link).textContent = r.name + (isPlanted ? " (planted)" : "") + "\n" +
        label("x") + ": " + fmt(r[xm]) + "\n" + label("y") + ": " + fmt(r[ym]) + "\n" +
        label("color") + ": " + fmt(r[cm]);
      el("circle", { cx: sx(r[xm]), cy: sy(r[ym]), r: 6, fill: colour(t, dark),
        stroke: "currentColor", "stroke-opacity": 0.5 }, link);
      if (isPlanted) {
        el("circle", { cx: sx(r[xm]), cy: sy(r[ym]), r: 10, fill: "none",
          stroke: "var(--md-accent-fg-color, #ff6e40)", "stroke-width": 2.5 }, link);
        const right = sx(r[xm]) > W / 2;   // the label on the side with room for it
        const text = r.name + " (planted)", x = sx(r[xm]) + (right ? -13 : 13);
        const width = text.length * 6.6;   // 11 px bold, about
        const y = labelY(right ? x - width : x, right ? x : x + width, sy(r[ym]) - 8);
        // A halo in the page's colour keeps the label legible over other points.
        el("text", { x: x, y: y, fill: "currentColor",
          "font-size": 11, "font-weight": "bold", "text-anchor": right ? "end" : "start",
          style: "paint-order: stroke; stroke: var(--md-default-bg-color); stroke-width: 3px" },
        link).textContent = text;
      }
    }
    const legend = document.createElement("p");
    legend.className = "atlas-small atlas-scatter-legend";
    const swatch = (t) => '<span class="atlas-scatter-swatch" style="background:' +
      colour(t, dark) + '"></span>';
    legend.innerHTML = "colour: " + swatch(0) + " " + fmt(c0) + " … " + swatch(1) + " " +
      fmt(c1) + " " + swatch(null) + " undefined";
    legend.prepend(document.createTextNode(label("color") + ", "));
    plot.replaceChildren(svg, legend);
  }

  async function mount(box) {
    try {
      const response = await fetch(box.dataset.atlas);
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      const rows = (await response.json()).atlas;
      const redraw = () => draw(box, rows);
      box.querySelectorAll("select").forEach((s) => s.addEventListener("change", redraw));
      new MutationObserver(redraw).observe(document.body,
        { attributes: true, attributeFilter: ["data-md-color-scheme"] });
      let width = box.clientWidth;
      window.addEventListener("resize", () => {
        if (box.clientWidth !== width) { width = box.clientWidth; redraw(); }
      });
      redraw();
    } catch (err) {
      box.querySelector(".atlas-scatter-plot").textContent =
        "The scatter could not be drawn: " + err.message;
    }
  }

  document.querySelectorAll(".atlas-scatter").forEach(mount);
})();
