/* Model Atlas attention codec: the one decoder of the stored attention in the browser, used by the
 * prompt pages (atlas.js) and the embed pages (embed.js). Python's is schema.decode_attention;
 * tests/test_layout.py checks that both give the same weights on a real artifact.
 *
 * A per-layer data file (generator/layout.py attention_layer) holds one layer of one model on one
 * prompt: {layer, heads, length: T, encoding: "uint8-tril-by-key", scale, data}, data = base64 of
 * uint8 [heads, T(T+1)/2]: per head the causal lower triangle key by key (key k holds queries
 * k..T-1), so query q, key k (k <= q) is at k*T - k(k-1)/2 + (q - k); weight = value / scale
 * (site_src/artifact-format.md). */
(function (global) {
  "use strict";

  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // One layer file -> weight(head, q, k), the stored weight of query q on key k (k <= q).
  function decodeLayer(layer) {
    if (layer.encoding !== "uint8-tril-by-key") {
      throw new Error("attention encoding " + layer.encoding + " is not uint8-tril-by-key");
    }
    const t = layer.length, tri = (t * (t + 1)) / 2, bytes = bytesOf(layer.data);
    if (bytes.length !== layer.heads * tri) {
      throw new Error("attention layer " + layer.layer + ": " + bytes.length + " bytes, expected "
                      + layer.heads * tri);
    }
    return function weight(head, q, k) {
      return bytes[head * tri + k * t - (k * (k - 1)) / 2 + (q - k)] / layer.scale;
    };
  }

  // One head of one layer as heatmap rows {q, k, w, ql, kl}, k <= q. With hideFirst, key 0 is
  // dropped and each row re-normalized over the rest (row 0 then has nothing left to show):
  // metrics.renormalize_without_first in Python.
  function headRows(layer, head, labels, hideFirst) {
    const weight = decodeLayer(layer);
    if (!(head >= 0 && head < layer.heads)) {
      throw new Error("head " + head + ": valid values are 0 to " + (layer.heads - 1));
    }
    const rows = [];
    for (let q = 0; q < layer.length; q++) {
      let total = 1;
      if (hideFirst) { total = 0; for (let k = 1; k <= q; k++) total += weight(head, q, k); }
      for (let k = hideFirst ? 1 : 0; k <= q; k++) {
        const w = weight(head, q, k);
        rows.push({ q: q, k: k, w: total > 0 ? w / total : 0, ql: labels[q], kl: labels[k] });
      }
    }
    return rows;
  }

  // The URL of one layer's file, from the template render writes into the page (the layer number
  // stands where generator/layout.py LAYER is).
  function layerUrl(template, layer) {
    return template.replace("{layer}", String(layer));
  }

  global.AtlasAttention = { decodeLayer: decodeLayer, headRows: headRows, layerUrl: layerUrl };
})(globalThis);
