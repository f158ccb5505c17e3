/* Model Atlas page script: draws the Altair (Vega-Lite) charts of a page from the data files it
 * fetches, and swaps the attention layer/head on demand. Vega, Vega-Lite and vega-embed come from
 * the bundled assets/vendor/vega-bundle.js; nothing is fetched from outside the site. */
(function () {
  "use strict";
  const cache = new Map();

  function getJSON(url) {
    if (!cache.has(url)) {
      cache.set(url, fetch(url).then((r) => {
        if (!r.ok) throw new Error(url + ": HTTP " + r.status);
        return r.json();
      }));
    }
    return cache.get(url);
  }

  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // One head of one layer as heatmap rows. Layout (see artifact-format): [heads, T*(T+1)/2] uint8,
  // row q holds keys 0..q, value/255 is the weight.
  function attentionRows(layer, head, labels) {
    const t = layer.length, tri = (t * (t + 1)) / 2, bytes = bytesOf(layer.data);
    const rows = [];
    let off = head * tri;
    for (let q = 0; q < t; q++) {
      for (let k = 0; k <= q; k++) {
        rows.push({ q: q, k: k, w: bytes[off++] / 255, ql: labels[q], kl: labels[k] });
      }
    }
    return rows;
  }

  function showError(el, err) {
    el.textContent = "Could not draw this chart: " + err.message;
    el.classList.add("atlas-error");
  }

  const EMBED = { actions: { export: true, source: false, compiled: false, editor: false },
                  renderer: "svg" };

  async function embed(el, spec, datasets) {
    const s = JSON.parse(JSON.stringify(spec));
    s.datasets = Object.assign({}, s.datasets || {}, datasets);
    return vegaEmbed(el, s, EMBED);
  }

  async function drawPlain(box) {
    const el = box.querySelector(".atlas-chart");
    try {
      const [spec, data] = await Promise.all([getJSON(box.dataset.spec), getJSON(box.dataset.src)]);
      await embed(el, spec, { tokens: data.tokens, predictions: data.predictions });
      el.dataset.rendered = "true";
    } catch (err) { showError(el, err); }
  }

  async function drawAttention(box) {
    const el = box.querySelector(".atlas-chart");
    const layerSel = box.querySelector(".atlas-layer"), headSel = box.querySelector(".atlas-head");
    try {
      const [spec, data] = await Promise.all([getJSON(box.dataset.spec), getJSON(box.dataset.src)]);
      const labels = data.tokens.map((t) => t.label);
      const rowsFor = async () => {
        const layer = await getJSON(box.dataset.attn + layerSel.value + ".json");
        return attentionRows(layer, Number(headSel.value), labels);
      };
      const result = await embed(el, spec, { attention: await rowsFor() });
      el.dataset.rendered = "true";
      const update = async () => {
        const rows = await rowsFor();
        await result.view.change("attention",
          vega.changeset().remove(() => true).insert(rows)).runAsync();
      };
      layerSel.addEventListener("change", () => update().catch((e) => showError(el, e)));
      headSel.addEventListener("change", () => update().catch((e) => showError(el, e)));
    } catch (err) { showError(el, err); }
  }

  function drawAll() {
    document.querySelectorAll(".atlas-attention").forEach(drawAttention);
    document.querySelectorAll(".atlas-plain").forEach(drawPlain);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
})();
