/* Model Atlas "every head at a glance": small multiples of every layer x head of one model on a
 * prompt page, each drawn from the stored attention of that head (the same files and decoder as
 * the heatmap). A layer's row fetches its heads' files only when it scrolls near the viewport; clicking a
 * thumbnail opens that head in the page's heatmap. Loaded before atlas.js, which calls
 * AtlasThumbs.mount(holder, page) for every .atlas-thumbs holder. */
(function () {
  "use strict";

  function mount(holder, page) {
    const layers = Number(holder.dataset.layers), heads = Number(holder.dataset.heads);
    const model = holder.dataset.model;
    const grid = document.createElement("div");
    grid.className = "atlas-thumb-grid";
    grid.style.gridTemplateColumns = "2.2em repeat(" + heads + ", var(--atlas-thumb))";
    const head0 = document.createElement("span");
    head0.className = "atlas-thumb-axis";
    head0.textContent = "L\\H";
    grid.append(head0);
    for (let h = 0; h < heads; h++) {
      const s = document.createElement("span");
      s.className = "atlas-thumb-axis";
      s.textContent = String(h);
      grid.append(s);
    }
    const rows = [];
    for (let l = 0; l < layers; l++) {
      const name = document.createElement("span");
      name.className = "atlas-thumb-axis atlas-thumb-layer";
      name.textContent = String(l);
      grid.append(name);
      const row = { layer: l, buttons: [], anchor: name };
      for (let h = 0; h < heads; h++) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "atlas-thumb";
        b.dataset.layer = String(l);
        b.dataset.head = String(h);
        b.title = "layer " + l + ", head " + h + ": open in the heatmap";
        b.setAttribute("aria-label", "open layer " + l + " head " + h + " in the heatmap");
        b.append(document.createElement("canvas"));
        b.addEventListener("click", () => page.openHead(model, l, h));
        grid.append(b);
        row.buttons.push(b);
      }
      rows.push(row);
    }
    holder.replaceChildren(grid);
    // One tab stop for the whole grid; the arrow keys move by head (left/right) and layer (up/down).
    const at = (l, h) => rows[Math.max(0, Math.min(layers - 1, l))]
      .buttons[Math.max(0, Math.min(heads - 1, h))];
    rows.forEach((row) => row.buttons.forEach((b, h) => {
      b.tabIndex = row.layer === 0 && h === 0 ? 0 : -1;
      b.addEventListener("focus", () => {
        rows.forEach((r) => r.buttons.forEach((x) => { x.tabIndex = -1; }));
        b.tabIndex = 0;
      });
      b.addEventListener("keydown", (event) => {
        const move = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0],
                       ArrowDown: [1, 0] }[event.key];
        if (!move) return;
        event.preventDefault();
        at(row.layer + move[0], h + move[1]).focus();
      });
    }));

    const drawRow = async (row) => {
      try {
        // One file per head (attention-codec.js); all of the row's heads, side by side.
        row.files = await Promise.all(row.buttons.map((b, h) => page.getJSON(
          AtlasCodec.headUrl(holder.dataset.attn, row.layer, h))));
        paintRow(row, page);
      } catch (err) {
        row.anchor.classList.add("atlas-error");
        row.anchor.title = "could not draw layer " + row.layer + ": " + err.message;
      }
    };
    page.onTheme(() => rows.forEach((row) => { if (row.files) paintRow(row, page); }));
    if (!("IntersectionObserver" in window)) { rows.forEach(drawRow); return; }
    const seen = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        seen.unobserve(entry.target);
        drawRow(rows[Number(entry.target.dataset.layer)]);
      }
    }, { rootMargin: "200px 0px" });
    rows.forEach((row) => seen.observe(row.buttons[0]));
  }

  // Each row scaled to its largest weight: at thumbnail size a pattern is what matters, and a head
  // that spreads its attention (weights ~1/q) would otherwise be a blank square.
  function rowScaled(m, t) {
    for (let q = 0; q < t; q++) {
      let top = 0;
      for (let k = 0; k <= q; k++) top = Math.max(top, m[q * t + k]);
      if (top > 0) for (let k = 0; k <= q; k++) m[q * t + k] /= top;
    }
    return m;
  }

  function paintRow(row, page) {
    const H = window.AtlasHeatmap;
    row.buttons.forEach((b, h) => {
      // One canvas pixel per token pair; CSS scales it to the thumbnail's size.
      const t = row.files[h].length;
      H.paint(b.querySelector("canvas"), rowScaled(H.headMatrix(row.files[h], false), t), t, 1,
              page.theme());
      b.dataset.drawn = "true";
    });
  }

  window.AtlasThumbs = { mount: mount };
})();
