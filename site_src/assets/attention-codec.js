/* Model Atlas attention codec: the one decoder of the stored attention in the browser, used by the
 * prompt pages (atlas.js) and the embed pages (embed.js). Python's is schema.decode_attention;
 * tests/test_layout.py checks that both give the same weights on a real artifact.
 *
 * A per-layer data file (generator/layout.py attention_layer) holds one layer of one model on one
 * prompt: {layer, heads, length: T, encoding: "base6-tril-by-key", scale, data}, data = base64 of
 * the layer's stored bytes: its V = heads * T(T+1)/2 values as base-6 digits three to a byte
 * (36 d0 + 6 d1 + d2), a digit 5 meaning 5 + the next of the overflow bytes that follow the
 * ceil(V/3) bytes of digits. Per head the causal lower
 * triangle key by key (key k holds queries k..T-1), so query q, key k (k <= q) is value
 * k*T - k(k-1)/2 + (q - k) of the head; weight = value / scale (site_src/artifact-format.md). */
(function (global) {
  "use strict";

  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // A layer's stored bytes -> its `count` values (schema.decode_values in Python).
  function unpack(bytes, count, layerNo) {
    const n = Math.ceil(count / 3), values = new Uint8Array(count);
    let over = n;
    for (let i = 0, b = 0; b < n; b++) {
      const code = bytes[b];
      if (code >= 216) {
        throw new Error("attention layer " + layerNo + ": byte " + b + " is no triple of digits");
      }
      const digits = [(code / 36) | 0, ((code / 6) | 0) % 6, code % 6];
      for (let j = 0; j < 3 && i < count; j++, i++) {
        values[i] = digits[j] === 5 ? 5 + bytes[over++] : digits[j];
      }
    }
    if (over !== bytes.length) {
      throw new Error("attention layer " + layerNo + ": " + bytes.length + " bytes, expected "
                      + over + " for " + count + " values");
    }
    return values;
  }

  // One layer file -> weight(head, q, k), the stored weight of query q on key k (k <= q).
  function decodeLayer(layer) {
    if (layer.encoding !== "base6-tril-by-key") {
      throw new Error("attention encoding " + layer.encoding + " is not base6-tril-by-key");
    }
    const t = layer.length, tri = (t * (t + 1)) / 2;
    const values = unpack(bytesOf(layer.data), layer.heads * tri, layer.layer);
    return function weight(head, q, k) {
      return values[head * tri + k * t - (k * (k - 1)) / 2 + (q - k)] / layer.scale;
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
