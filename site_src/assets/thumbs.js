/* Model Atlas "every head at a glance": small multiples of every layer x head of one model on a
 * prompt page, drawn from the small max-pooled images render makes at build time
 * (generator/overview.py; one file per model and prompt, the holder's data-thumbs), never from the
 * attention itself: at 2,048 tokens Qwen2.5's 336 heads cost about 120 KB, where its layer files
 * cost megabytes. The file is fetched once the grid scrolls near the viewport; clicking a
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
    const buttons = [];
    for (let l = 0; l < layers; l++) {
      const name = document.createElement("span");
      name.className = "atlas-thumb-axis atlas-thumb-layer";
      name.textContent = String(l);
      grid.append(name);
      const row = [];
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
        const link = headPage(holder, l, h);
        if (link) b.dataset.headPage = link;
        grid.append(b);
        row.push(b);
      }
      buttons.push(row);
    }
    holder.replaceChildren(grid);
    // One tab stop for the whole grid; the arrow keys move by head (left/right) and layer (up/down).
    const at = (l, h) => buttons[Math.max(0, Math.min(layers - 1, l))]
      [Math.max(0, Math.min(heads - 1, h))];
    buttons.forEach((row, l) => row.forEach((b, h) => {
      b.tabIndex = l === 0 && h === 0 ? 0 : -1;
      b.addEventListener("focus", () => {
        buttons.forEach((r) => r.forEach((x) => { x.tabIndex = -1; }));
        b.tabIndex = 0;
      });
      b.addEventListener("keydown", (event) => {
        const move = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0],
                       ArrowDown: [1, 0] }[event.key];
        if (!move) return;
        event.preventDefault();
        at(l + move[0], h + move[1]).focus();
      });
    }));

    let images = null;
    const drawAll = async () => {
      try {
        images = images || decode(await page.getJSON(holder.dataset.thumbs), layers, heads);
        paintAll(buttons, images, page.theme());
      } catch (err) {
        holder.classList.add("atlas-error");
        holder.title = "could not draw the thumbnails: " + err.message;
      }
    };
    page.onTheme(() => { if (images) paintAll(buttons, images, page.theme()); });
    if (!("IntersectionObserver" in window)) { drawAll(); return; }
    const seen = new IntersectionObserver((entries) => {
      if (!entries.some((e) => e.isIntersecting)) return;
      seen.disconnect();
      drawAll();
    }, { rootMargin: "200px 0px" });
    seen.observe(holder);
  }

  // The address of one head's own page, from the holder's data-head-page template (issue 18 puts
  // it there; {layer} and {head} stand for the numbers); null while there is none.
  function headPage(holder, layer, head) {
    const template = holder.dataset.headPage;
    if (!template) return null;
    return template.replace("{layer}", String(layer)).replace("{head}", String(head));
  }

  // A thumbnail file (generator/overview.py) -> {size, levels, at(layer, head) -> Uint8Array of
  // size * size levels, row-major, zero above the diagonal}. Two 4-bit levels to a byte, the first
  // in the high nibble; per head the lower triangle row by row.
  function decode(file, layers, heads) {
    if (file.encoding !== "maxpool-rowscaled-nibble-tril") {
      throw new Error("thumbnail encoding " + file.encoding + " is not maxpool-rowscaled-nibble-tril");
    }
    if (file.layers !== layers || file.heads !== heads) {
      throw new Error("thumbnail file has " + file.layers + " x " + file.heads + " heads, the page " +
                      layers + " x " + heads);
    }
    const bin = atob(file.data), n = file.size, tri = (n * (n + 1)) / 2;
    if (bin.length !== Math.ceil((layers * heads * tri) / 2)) {
      throw new Error("thumbnail file: " + bin.length + " bytes for " + layers * heads + " heads of "
                      + n + " px");
    }
    const nibble = (i) => (i % 2 ? bin.charCodeAt(i >> 1) & 15 : bin.charCodeAt(i >> 1) >> 4);
    return {
      size: n, levels: file.levels,
      at(layer, head) {
        const out = new Uint8Array(n * n);
        let i = (layer * heads + head) * tri;
        for (let q = 0; q < n; q++) for (let k = 0; k <= q; k++) out[q * n + k] = nibble(i++);
        return out;
      },
    };
  }

  function paintAll(buttons, images, theme) {
    const n = images.size, ramp = AtlasHeatmap.rampOf(theme);
    const colours = [];
    for (let v = 0; v <= images.levels; v++) colours.push(AtlasHeatmap.colour(ramp, v / images.levels));
    buttons.forEach((row, l) => row.forEach((b, h) => {
      // One canvas pixel per pooled pixel; CSS scales it to the thumbnail's size.
      const canvas = b.querySelector("canvas");
      canvas.width = canvas.height = n;
      const ctx = canvas.getContext("2d"), img = ctx.createImageData(n, n);
      const levels = images.at(l, h);
      for (let q = 0; q < n; q++) {
        for (let k = 0; k <= q; k++) {
          const c = colours[levels[q * n + k]], p = 4 * (q * n + k);
          img.data[p] = c[0]; img.data[p + 1] = c[1]; img.data[p + 2] = c[2]; img.data[p + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
      b.dataset.drawn = "true";
    }));
  }

  window.AtlasThumbs = { mount: mount, decode: decode };
})();
