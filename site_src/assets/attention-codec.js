/* Model Atlas attention codec: the one decoder of the stored attention in the browser, used by the
 * prompt pages (heatmap.js, thumbs.js) and the embed pages (embed.js). Python's is
 * generator/codec.py decode_head; tests/test_layout.py checks that both give the same weights on
 * a real artifact.
 *
 * A per-head data file (generator/layout.py attention_head) holds one head of one layer of one
 * model on one prompt, gzipped JSON (fetchHead reads it): {layer, head, length: T,
 * encoding: "nonzero-runs-base6", scale, data}, data = base64 of the head's block
 * (site_src/artifact-format.md):
 *   1. a varint n, the count of non-zero values;
 *   2. ceil(n/3) bytes of base-6 digits, 36 d0 + 6 d1 + d2, value = digit + 1, a digit 5 meaning
 *      6 + the next overflow byte;
 *   3. the overflow bytes;
 *   4. varints: lengths of alternating runs of zero and non-zero positions over the lower
 *      triangle key by key (key k holds queries k..T-1), a zero run first, summing to
 *      T(T+1)/2.
 * Varints are unsigned LEB128. weight = value / scale; a position not listed is 0. */
(function (global) {
  "use strict";

  const ENCODING = "nonzero-runs-base6";

  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // One head file -> its stored weights as CSR: {layer, head, length: T, scale,
  // rowStart: Uint32Array(T + 1), keys: Uint16Array | Uint32Array, values: Uint8Array}, rows =
  // query positions, keys ascending within a row, weight = values[i] / scale.
  function decodeHead(file) {
    const where = "attention layer " + file.layer + " head " + file.head + ": ";
    if (file.encoding !== ENCODING) {
      throw new Error(where + "encoding " + file.encoding + " is not " + ENCODING);
    }
    const bytes = bytesOf(file.data), t = file.length, size = (t * (t + 1)) / 2;
    let at = 0;
    function varint() {
      let value = 0, scale = 1, b;
      do {
        if (at >= bytes.length) throw new Error(where + "the block ends inside a varint");
        b = bytes[at++];
        value += (b & 127) * scale;
        scale *= 128;
      } while (b >= 128);
      return value;
    }
    const n = varint();
    if (n > size) throw new Error(where + n + " non-zero values of " + size + " positions");
    const values = new Uint8Array(n);
    let over = at + Math.ceil(n / 3);
    for (let i = 0; i < n; i++) {
      const code = bytes[at + ((i / 3) | 0)];
      if (!(code < 216)) throw new Error(where + "byte " + (at + ((i / 3) | 0)) + " is no triple");
      const d = i % 3 === 0 ? (code / 36) | 0 : i % 3 === 1 ? ((code / 6) | 0) % 6 : code % 6;
      values[i] = d === 5 ? 6 + bytes[over++] : d + 1;
    }
    if (over > bytes.length) throw new Error(where + "the overflow bytes are cut short");
    at = over;
    // The runs give each value's position key by key; count the values of each row, then place
    // them row by row (keys ascending within a row, since keys come in order).
    const queryOf = new Uint32Array(n), keyOf = new Uint32Array(n);
    const rowStart = new Uint32Array(t + 1);
    let pos = 0, key = 0, keyStart = 0, filled = 0, zeros = true;
    while (pos < size) {
      const len = varint();
      if (len < 1 && pos > 0) throw new Error(where + "a run of length 0 after the first");
      if (!zeros) {
        if (filled + len > n) throw new Error(where + "the runs list more than " + n + " values");
        for (let p = pos; p < pos + len; p++) {
          while (p >= keyStart + t - key) { keyStart += t - key; key++; }
          queryOf[filled] = key + (p - keyStart);
          keyOf[filled++] = key;
          rowStart[key + (p - keyStart) + 1]++;
        }
      }
      pos += len;
      zeros = !zeros;
    }
    if (pos !== size || filled !== n || at !== bytes.length) {
      throw new Error(where + "the runs cover " + pos + " of " + size + " positions and " + filled
                      + " of " + n + " values, " + (bytes.length - at) + " bytes left over");
    }
    for (let q = 0; q < t; q++) rowStart[q + 1] += rowStart[q];
    const keys = t <= 65536 ? new Uint16Array(n) : new Uint32Array(n);
    const rowValues = new Uint8Array(n), next = rowStart.slice(0, t);
    for (let i = 0; i < n; i++) {
      const j = next[queryOf[i]]++;
      keys[j] = keyOf[i];
      rowValues[j] = values[i];
    }
    return { layer: file.layer, head: file.head, length: t, scale: file.scale,
             rowStart: rowStart, keys: keys, values: rowValues };
  }

  // A decoded head as a dense [T, T] row-major Float32Array (query q, key k at q * T + k; zero
  // above the diagonal and wherever nothing is stored). With hideFirst, key 0 is dropped and each
  // row re-normalized over the rest (row 0 then has nothing left to show):
  // metrics.renormalize_without_first in Python.
  function denseHead(csr, hideFirst) {
    const t = csr.length, m = new Float32Array(t * t);
    for (let q = 0; q < t; q++) {
      let total = 0;
      for (let i = csr.rowStart[q]; i < csr.rowStart[q + 1]; i++) {
        const k = csr.keys[i], w = csr.values[i] / csr.scale;
        if (hideFirst && k === 0) continue;
        m[q * t + k] = w;
        total += w;
      }
      if (hideFirst) {
        for (let k = 1; k <= q; k++) m[q * t + k] = total > 0 ? m[q * t + k] / total : 0;
      }
    }
    return m;
  }

  // One head file as heatmap rows {q, k, w, ql, kl}, every k <= q (hideFirst: k >= 1, each row
  // re-normalized in double precision, as denseHead does in single).
  function headRows(file, labels, hideFirst) {
    const csr = decodeHead(file), t = csr.length, rows = [], w = new Float64Array(t);
    for (let q = 0; q < t; q++) {
      w.fill(0, 0, q + 1);
      for (let i = csr.rowStart[q]; i < csr.rowStart[q + 1]; i++) {
        w[csr.keys[i]] = csr.values[i] / csr.scale;
      }
      let total = 1;
      if (hideFirst) { total = 0; for (let k = 1; k <= q; k++) total += w[k]; }
      for (let k = hideFirst ? 1 : 0; k <= q; k++) {
        rows.push({ q: q, k: k, w: total > 0 ? w[k] / total : 0, ql: labels[q], kl: labels[k] });
      }
    }
    return rows;
  }

  // Tokens per row and column of a standalone attention chart of t tokens: at most `side` rows
  // (generator/embed.py ATTENTION_SIDE and attention_block).
  function blockOf(t, side) {
    return Math.max(1, Math.ceil(t / side));
  }

  // The rows of a standalone attention chart (generator/embed.py attention_rows): headRows up to
  // `side` tokens; past it, q and k number blocks of blockOf(t, side) tokens, w is the largest
  // weight of the block and the labels "first–last: text of the first". tokens: the token rows
  // of the prompt's data file ({label, text}, generator/pagedata.py token_rows).
  function chartRows(file, tokens, side) {
    const b = blockOf(file.length, side);
    if (b === 1) return headRows(file, tokens.map((x) => x.label), false);
    const csr = decodeHead(file), t = csr.length;
    const n = Math.ceil(t / b), w = new Float64Array(n * n), names = [], rows = [];
    for (let q = 0; q < t; q++) {
      const row = Math.floor(q / b) * n;
      for (let i = csr.rowStart[q]; i < csr.rowStart[q + 1]; i++) {
        const cell = row + Math.floor(csr.keys[i] / b), v = csr.values[i] / csr.scale;
        if (v > w[cell]) w[cell] = v;
      }
    }
    for (let i = 0; i < n; i++) {
      names.push(i * b + "\u2013" + (Math.min(t, (i + 1) * b) - 1) + ": " + tokens[i * b].text);
    }
    for (let q = 0; q < n; q++) {
      for (let k = 0; k <= q; k++) {
        rows.push({ q: q, k: k, w: w[q * n + k], ql: names[q], kl: names[k] });
      }
    }
    return rows;
  }

  // The URL of one head's file, from the template render writes into the page (the layer and
  // head numbers stand where generator/layout.py LAYER and HEAD are).
  function headUrl(template, layer, head) {
    return template.replace("{layer}", String(layer)).replace("{head}", String(head));
  }

  // A head file's body as its JSON object. The site writes the file gzipped: a host that serves
  // it as it is (python -m http.server, most object stores) hands over the gzip stream, which
  // starts with the bytes 1f 8b and is inflated here; a host that labels it Content-Encoding: gzip
  // has the browser inflate it first, and the body is the JSON itself.
  async function parseHead(body) {
    if (body.length >= 2 && body[0] === 0x1f && body[1] === 0x8b) {
      const inflated = new Blob([body]).stream().pipeThrough(new DecompressionStream("gzip"));
      return JSON.parse(await new Response(inflated).text());
    }
    return JSON.parse(new TextDecoder().decode(body));
  }

  // One head's file fetched and parsed (parseHead); any failure names the URL.
  async function fetchHead(url) {
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error("HTTP " + response.status);
      return await parseHead(new Uint8Array(await response.arrayBuffer()));
    } catch (err) {
      throw new Error(url + ": " + err.message);
    }
  }

  global.AtlasCodec = { decodeHead: decodeHead, denseHead: denseHead, headRows: headRows,
                       chartRows: chartRows, headUrl: headUrl, parseHead: parseHead,
                       fetchHead: fetchHead };
})(globalThis);
