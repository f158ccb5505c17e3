/* Model Atlas page script: draws a page's Altair (Vega-Lite) charts from the data files it
 * fetches, when each chart scrolls into view, and drives the attention view (layer, head, hiding
 * the first token, clicks in the all-heads chart). Every URL comes from the data attributes render
 * writes into the page (generator/layout.py); the attention is decoded by the shared codec
 * (attention-codec.js, loaded before this script). Vega, Vega-Lite and vega-embed come from the
 * site's vendored bundle, which this script loads itself, only on pages that hold a chart (its URL
 * is the chart elements' data-vega); nothing is fetched from outside the site. */
(function () {
  "use strict";
  const cache = new Map();
  const CHARTS = ".atlas-attention, .atlas-plain";
  let bundle = null;

  // The Vega bundle is 900 KB: a page without a chart (home, sets, reference) must not fetch it.
  // The pages list only the codec and this script (layout.PAGE_SCRIPTS); the bundle is added here,
  // once, as soon as a page with a chart runs this script (beside the prefetch of the first
  // charts' data).
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

  // Charts are drawn one after another, not interleaved: two charts started together would both
  // appear only when both are done, while in turn the first shows as soon as it alone is done.
  let drawing = Promise.resolve();

  async function embed(el, spec, datasets, renderer) {
    const s = JSON.parse(JSON.stringify(spec));
    s.datasets = Object.assign({}, s.datasets || {}, datasets);
    const options = renderer ? Object.assign({}, EMBED, { renderer }) : EMBED;
    const turn = drawing.then(loadVega).then(() => window.vegaEmbed(el, s, options));
    drawing = turn.catch(() => undefined);
    const result = await turn;
    el.dataset.rendered = "true";
    // For benchmarks/page_bench.py: when the page first showed a chart.
    if (!performance.getEntriesByName("atlas-first-chart").length) {
      performance.mark("atlas-first-chart");
    }
    return result;
  }

  async function drawPlain(box) {
    const el = box.querySelector(".atlas-chart");
    try {
      const [spec, data] = await Promise.all([getJSON(box.dataset.spec), getJSON(box.dataset.src)]);
      const result = await embed(el, spec, data);
      if (box.dataset.model) {
        // All-heads chart: a click opens that head in the same model's attention heatmap.
        result.view.addEventListener("click", (event, item) => {
          if (!item || !item.datum || item.datum.head === undefined) return;
          const target = document.querySelector(
            '.atlas-attention[data-model="' + box.dataset.model + '"]');
          if (!target) return;
          target.querySelector(".atlas-layer").value = String(item.datum.layer);
          target.querySelector(".atlas-head").value = String(item.datum.head);
          target.querySelector(".atlas-head").dispatchEvent(new Event("change"));
          target.scrollIntoView({ behavior: "smooth", block: "start" });
        });
      }
    } catch (err) { showError(el, err); }
  }

  async function drawAttention(box) {
    const el = box.querySelector(".atlas-chart");
    const layerSel = box.querySelector(".atlas-layer"), headSel = box.querySelector(".atlas-head");
    const sink = box.querySelector(".atlas-sink");
    try {
      const layerFile = () => getJSON(AtlasAttention.layerUrl(box.dataset.attn, layerSel.value));
      const [spec, data] = await Promise.all([getJSON(box.dataset.spec), getJSON(box.dataset.src),
        layerFile()]);
      const labels = data.tokens.map((t) => t.label);
      const rowsFor = async () =>
        AtlasAttention.headRows(await layerFile(), Number(headSel.value), labels, sink.checked);
      // Canvas: a heatmap has T(T+1)/2 cells (2,628 at 72 tokens, 35,000 at 264), too many
      // SVG elements to draw quickly. The embed page's SVG and PNG downloads are unaffected.
      const result = await embed(el, spec, { attention: await rowsFor() }, "canvas");
      const update = async () => {
        const rows = await rowsFor();
        // view.data replaces the named dataset (the bundle's global `vega` is not exported).
        await result.view.data("attention", rows).runAsync();
        el.dataset.layer = layerSel.value;
        el.dataset.head = headSel.value;
      };
      for (const input of [layerSel, headSel, sink]) {
        input.addEventListener("change", () => update().catch((e) => showError(el, e)));
      }
    } catch (err) { showError(el, err); }
  }

  function draw(box) {
    return box.classList.contains("atlas-attention") ? drawAttention(box) : drawPlain(box);
  }

  function drawAll() {
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

  // Start downloading the bundle and the data of the charts on the first screen now, together.
  function prefetch() {
    if (!document.querySelector(CHARTS)) return;
    loadVega().catch(() => {});
    document.querySelectorAll(CHARTS).forEach((box) => {
      if (box.getBoundingClientRect().top > window.innerHeight + 400) return;
      getJSON(box.dataset.spec).catch(() => {});
      getJSON(box.dataset.src).catch(() => {});
      if (box.dataset.attn) getJSON(AtlasAttention.layerUrl(box.dataset.attn, 0)).catch(() => {});
    });
  }

  prefetch();
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else drawAll();
})();
