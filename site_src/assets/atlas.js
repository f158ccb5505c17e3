/* Model Atlas page script: draws a page's Altair (Vega-Lite) charts from the data files it
 * fetches, when each chart scrolls into view; hands the attention heatmaps and the head
 * thumbnails of prompt pages to heatmap.js and thumbs.js (which decode with the shared codec,
 * attention-codec.js); keeps the URL and the attention selectors in step
 * (?model=M&layer=L&head=H, generator/layout.py head_query); re-themes every chart when the page
 * switches between light and dark. Every URL comes from the data attributes render writes into
 * the page (generator/layout.py). Vega, Vega-Lite and vega-embed come from the site's vendored
 * bundle, which this script loads itself, only on pages that hold a Vega chart (its URL is the
 * chart elements' data-vega); nothing is fetched from outside the site. Also drives the direct
 * logit attribution view (position, target, the list of the largest contributors; a click on a
 * head opens its attention). */
(function () {
  "use strict";
  const cache = new Map();
  const CHARTS = ".atlas-attention, .atlas-plain, .atlas-dla";
  let bundle = null;

  // The Vega bundle is 900 KB: a page without a chart (home, sets, reference) must not fetch it.
  // The pages list only the small scripts (layout.PAGE_SCRIPTS); the bundle is added here, once,
  // as soon as a page with a Vega chart runs this script (beside the prefetch of the first
  // charts' data). The attention heatmaps and thumbnails need no Vega.
  function loadVega() {
    if (window.vegaEmbed) return Promise.resolve();
    if (!bundle) {
      bundle = new Promise((resolve, reject) => {
        const box = document.querySelector("[data-vega]");
        if (!box) { reject(new Error("no data-vega attribute: cannot find the chart library")); return; }
        const script = document.createElement("script");
        script.src = box.dataset.vega;
        script.onload = () => resolve();
        script.onerror = () => reject(new Error(script.src + ": the chart library did not load"));
        document.head.appendChild(script);
      });
    }
    return bundle;
  }
  window.atlasLoadVega = loadVega;
  const EMBED = { actions: { export: true, source: false, compiled: false, editor: false },
                  renderer: "svg" };

  function getJSON(url) {
    if (!cache.has(url)) {
      cache.set(url, fetch(url).then((r) => {
        if (!r.ok) throw new Error(url + ": HTTP " + r.status);
        return r.json();
      }));
    }
    return cache.get(url);
  }

  function showError(el, err) {
    el.textContent = "Could not draw this chart: " + err.message;
    el.classList.add("atlas-error");
  }

  function markFirstChart() {
    // For benchmarks/page_bench.py: when the page first showed a chart.
    if (!performance.getEntriesByName("atlas-first-chart").length) {
      performance.mark("atlas-first-chart");
    }
  }

  // --- light and dark ---------------------------------------------------------------------------
  // Material puts the colour scheme on <body data-md-color-scheme="default|slate">; the colours
  // are read from its CSS variables (through a probe, which resolves them to rgb()).
  let themeNow = null;
  const themeListeners = [];
  function readTheme() {
    const probe = document.createElement("div");
    probe.style.cssText = "position:absolute;visibility:hidden;color:var(--md-default-fg-color);" +
      "background:var(--md-default-bg-color);border-color:var(--md-default-fg-color--lighter)";
    document.body.append(probe);
    const cs = getComputedStyle(probe);
    const t = { dark: document.body.getAttribute("data-md-color-scheme") === "slate",
                fg: cs.color, bg: cs.backgroundColor, line: cs.borderTopColor };
    probe.remove();
    if (!t.bg || t.bg === "rgba(0, 0, 0, 0)") t.bg = t.dark ? "#1e2129" : "#ffffff";
    return t;
  }
  function theme() { return themeNow || (themeNow = readTheme()); }
  function onTheme(f) { themeListeners.push(f); }
  function watchTheme() {
    new MutationObserver(() => {
      const before = theme();
      themeNow = readTheme();
      if (before.dark === themeNow.dark && before.bg === themeNow.bg) return;
      themeListeners.forEach((f) => { try { f(themeNow); } catch (e) { console.warn(e); } });
    }).observe(document.body, { attributes: true, attributeFilter: ["data-md-color-scheme"] });
  }
  function vegaConfig() {
    const t = theme();
    const text = { labelColor: t.fg, titleColor: t.fg };
    return { background: t.bg, view: { stroke: t.line },
             axis: Object.assign({ domainColor: t.line, tickColor: t.line, gridColor: t.line },
                                 text),
             legend: text, title: { color: t.fg }, header: text };
  }

  // --- Vega charts ------------------------------------------------------------------------------
  // Charts are drawn one after another, not interleaved: two charts started together would both
  // appear only when both are done, while in turn the first shows as soon as it alone is done.
  let drawing = Promise.resolve();

  async function embed(el, spec, datasets, params) {
    const s = JSON.parse(JSON.stringify(spec));
    s.datasets = Object.assign({}, s.datasets || {}, datasets);
    // Values the page sets for the spec's params: the shared scale domains of both models.
    for (const p of s.params || []) {
      if (params && Object.prototype.hasOwnProperty.call(params, p.name)) p.value = params[p.name];
    }
    const options = Object.assign({}, EMBED, { config: vegaConfig(),
                                               tooltip: { theme: theme().dark ? "dark" : "light" } });
    const turn = drawing.then(loadVega).then(() => window.vegaEmbed(el, s, options));
    drawing = turn.catch(() => undefined);
    const result = await turn;
    el.dataset.rendered = "true";
    el.dataset.theme = theme().dark ? "dark" : "light";
    markFirstChart();
    return result;
  }

  async function drawPlain(box) {
    const el = box.querySelector(".atlas-chart");
    const params = box.dataset.params ? JSON.parse(box.dataset.params) : null;
    try {
      const [spec, data] = await Promise.all([getJSON(box.dataset.spec), getJSON(box.dataset.src)]);
      let shown = null;
      const show = async () => {
        // Redrawn in the other colour scheme: the old view's timers and listeners go with it.
        if (shown) shown.finalize();
        const result = shown = await embed(el, spec, data, params);
        if (box.dataset.model) {
          // All-heads chart: a click opens that head in the same model's attention heatmap.
          result.view.addEventListener("click", (event, item) => {
            if (!item || !item.datum || item.datum.head === undefined) return;
            openHead(box.dataset.model, item.datum.layer, item.datum.head);
          });
        }
      };
      await show();
      // A chart's colours are fixed when it is drawn: draw it again in the other scheme.
      onTheme(() => show().catch((err) => showError(el, err)));
    } catch (err) { showError(el, err); }
  }

  // --- direct logit attribution ------------------------------------------------------------------
  // Heatmap rows of one position and target: every head, null (drawn blank) where the head is not
  // among the stored largest components; share = value / the largest |value| there. Mirrors
  // pagedata.dla_head_rows.
  function dlaRows(entry, layers, heads) {
    const values = new Map();
    if (entry) entry.index.forEach((c, n) => values.set(c, entry.value[n]));
    const top = Math.max(0, ...Array.from(values.values(), Math.abs)) || 1;
    const rows = [];
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < heads; h++) {
        const c = 1 + l * heads + h, v = values.has(c) ? values.get(c) : null;
        rows.push({ layer: l, head: h, name: "L" + l + ".H" + h, value: v,
                    share: v === null ? null : Math.round((v / top) * 1e4) / 1e4 });
      }
    }
    return rows;
  }

  const LIST_LENGTH = 8;    // pagedata.DLA_LIST_LENGTH: render writes the default list alike
  const signed = (v) => (v >= 0 ? "+" : "\u2212") + Math.abs(v).toFixed(3);

  // "Who wrote it": the largest stored contributions, signed; a head's name opens its attention.
  // Mirrors pagedata.dla_list (render writes the default position's list into the page).
  function fillDlaList(box, data, pos, target) {
    const caption = box.querySelector(".atlas-dla-caption");
    const list = box.querySelector(".atlas-dla-list");
    const entry = data[target][pos], p = data.positions[pos];
    list.textContent = "";
    if (!entry) {
      caption.textContent = "No token came after " + p.label + ".";
      return;
    }
    const token = target === "top1" ? p.top1 : p.next;
    const logit = entry.value.reduce((s, v) => s + v, 0) + entry.rest;
    caption.textContent = "Logit of " + token + " after " + p.label + ": " + logit.toFixed(3) +
      ". Who wrote it (largest direct contributions):";
    let listed = 0;
    entry.index.slice(0, LIST_LENGTH).forEach((c, n) => {
      // "+0.000" says nothing: such components join the rest (as pagedata.dla_list).
      if (Math.abs(entry.value[n]) < 0.0005) return;
      listed += entry.value[n];
      const li = document.createElement("li");
      const name = data.names[c], head = /^L(\d+)\.H(\d+)$/.exec(name);
      if (head) {
        const a = document.createElement("a");
        a.href = "#";
        a.textContent = name;
        a.addEventListener("click", (event) => {
          event.preventDefault();
          openHead(box.dataset.model, Number(head[1]), Number(head[2]), true, pos);
        });
        li.appendChild(a);
      } else li.appendChild(document.createTextNode(name));
      li.appendChild(document.createTextNode(" " + signed(entry.value[n])));
      list.appendChild(li);
    });
    const rest = document.createElement("li");
    rest.textContent = "all other components " + signed(logit - listed);
    list.appendChild(rest);
  }

  async function drawDla(box) {
    const el = box.querySelector(".atlas-chart");
    const posSel = box.querySelector(".atlas-dla-pos");
    const targetSel = box.querySelector(".atlas-dla-target");
    try {
      const [spec, data] = await Promise.all([getJSON(box.dataset.spec), getJSON(box.dataset.src)]);
      const rows = () => dlaRows(data[targetSel.value][Number(posSel.value)], data.layers,
                                 data.heads);
      let view = null;
      const show = async () => {
        view = (await embed(el, spec, { dla: rows() })).view;
        view.addEventListener("click", (event, item) => {
          if (!item || !item.datum || item.datum.head === undefined) return;
          openHead(box.dataset.model, item.datum.layer, item.datum.head, true,
                   Number(posSel.value));
        });
      };
      const update = async () => {
        // view.data replaces the named dataset (the bundle's global `vega` is not exported).
        await view.data("dla", rows()).runAsync();
        fillDlaList(box, data, Number(posSel.value), targetSel.value);
        el.dataset.position = posSel.value;
        el.dataset.target = targetSel.value;
      };
      await show();
      fillDlaList(box, data, Number(posSel.value), targetSel.value);
      for (const input of [posSel, targetSel]) {
        input.addEventListener("change", () => update().catch((e) => showError(el, e)));
      }
      // A chart's colours are fixed when it is drawn: draw it again in the other scheme.
      onTheme(() => show().catch((err) => showError(el, err)));
    } catch (err) { showError(el, err); }
  }

  // --- the attention view and the URL -----------------------------------------------------------
  function attentionBox(model) {
    return document.querySelector('.atlas-attention[data-model="' + model + '"]');
  }

  // Show layer/head of `model` in its heatmap (a thumbnail or all-heads click, or the URL);
  // with `position` (from "who wrote it"), that token's row and column are lit once it is drawn.
  function openHead(model, layer, head, scroll = true, position = null) {
    const box = attentionBox(model);
    if (!box) return false;
    const layerSel = box.querySelector(".atlas-layer"), headSel = box.querySelector(".atlas-head");
    if (Number(layer) >= layerSel.options.length || Number(head) >= headSel.options.length) {
      return false;
    }
    layerSel.value = String(layer);
    headSel.value = String(head);
    if (position !== null && box.atlasHeatmap) box.atlasHeatmap.active = [position, position];
    headSel.dispatchEvent(new Event("change"));
    if (scroll) box.scrollIntoView({ behavior: "smooth", block: "start" });
    return true;
  }

  // ?model=M&layer=L&head=H (or #model=M&layer=L&head=H): open that head when the page loads.
  // Without model, every heatmap that has that layer and head opens it.
  function fromURL() {
    const q = new URLSearchParams(location.search);
    const h = new URLSearchParams(location.hash.replace(/^#/, ""));
    const get = (k) => q.get(k) !== null ? q.get(k) : h.get(k);
    const layer = get("layer"), head = get("head"), model = get("model");
    if (layer === null && head === null) return;
    let first = null;
    document.querySelectorAll(".atlas-attention").forEach((box) => {
      if (model && box.dataset.model !== model) return;
      const layerSel = box.querySelector(".atlas-layer"), headSel = box.querySelector(".atlas-head");
      const l = layer === null ? layerSel.value : layer, hd = head === null ? headSel.value : head;
      if (!/^\d+$/.test(l) || !/^\d+$/.test(hd) || Number(l) >= layerSel.options.length ||
          Number(hd) >= headSel.options.length) return;
      layerSel.value = l;
      headSel.value = hd;
      first = first || box;
    });
    if (first) first.scrollIntoView({ block: "start" });
  }

  // The URL follows the selectors, so a reader can link to the head they are looking at.
  function followURL() {
    document.querySelectorAll(".atlas-attention").forEach((box) => {
      const layerSel = box.querySelector(".atlas-layer"), headSel = box.querySelector(".atlas-head");
      const update = () => {
        const q = new URLSearchParams(location.search);
        q.set("model", box.dataset.model);
        q.set("layer", layerSel.value);
        q.set("head", headSel.value);
        const hash = /(^|&)(layer|head|model)=/.test(location.hash.slice(1)) ? "" : location.hash;
        history.replaceState(history.state, "", location.pathname + "?" + q.toString() + hash);
      };
      layerSel.addEventListener("change", update);
      headSel.addEventListener("change", update);
    });
  }

  const page = { getJSON, showError, markFirstChart, theme, onTheme, openHead };
  window.AtlasPage = page;

  const started = new WeakSet();
  function draw(box) {
    if (started.has(box)) return undefined;
    started.add(box);
    if (box.classList.contains("atlas-attention")) {
      if (!window.AtlasHeatmap) return showError(box.querySelector(".atlas-chart"),
                                                 new Error("heatmap.js is not loaded"));
      return window.AtlasHeatmap.draw(box, page)
        .catch((err) => showError(box.querySelector(".atlas-chart"), err));
    }
    return box.classList.contains("atlas-dla") ? drawDla(box) : drawPlain(box);
  }

  function onScreen(box) { return box.getBoundingClientRect().top < window.innerHeight + 400; }

  function drawAll() {
    watchTheme();
    followURL();
    if (window.AtlasThumbs) {
      document.querySelectorAll(".atlas-thumbs").forEach((h) => window.AtlasThumbs.mount(h, page));
    }
    const boxes = document.querySelectorAll(CHARTS);
    if (!("IntersectionObserver" in window)) { boxes.forEach(draw); return; }
    // Charts are drawn (and their data fetched) only when they come near the viewport.
    const seen = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        seen.unobserve(entry.target);
        draw(entry.target);
      }
    }, { rootMargin: "400px 0px" });
    boxes.forEach((box) => seen.observe(box));
  }

  // Draw the attention heatmaps now, which need no Vega, wherever they are on the page: they are
  // a prompt page's main view, cost one token file and one head file each, and the token chips
  // above them (which can push them below the first screen) work with them. Start the data of
  // the Vega charts on the first screen too. The 900 KB Vega bundle (pages with a Vega chart
  // only) is fetched at once when a Vega chart is on the first screen, else once the heatmaps
  // are drawn, so that it does not compete with them for the network and the main thread.
  function early() {
    const heatmaps = [];
    let vegaOnScreen = false;
    document.querySelectorAll(CHARTS).forEach((box) => {
      if (box.classList.contains("atlas-attention") && window.AtlasHeatmap) {
        heatmaps.push(draw(box));
        return;
      }
      if (!onScreen(box)) return;
      vegaOnScreen = true;
      getJSON(box.dataset.spec).catch(() => {});
      getJSON(box.dataset.src).catch(() => {});
    });
    if (!document.querySelector(".atlas-plain")) return;
    const later = vegaOnScreen ? Promise.resolve() : Promise.allSettled(heatmaps);
    later.then(() => loadVega()).catch(() => {});
  }

  fromURL();
  early();
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else drawAll();
})();
