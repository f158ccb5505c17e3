/* One tokenizer of the "Tokenize your own text" page, off the page's main thread (a module
 * worker; tokenize.js starts one per model, so the models load and tokenize side by side).
 *
 * Messages in:  {type: "load", library, tokenizer}  the URLs of the vendored @huggingface/tokenizers
 *                                                    and of the model's tokenizer.json (the page's
 *                                                    data attributes; generator/layout.py names them)
 *               {type: "encode", seq, text}
 * Messages out: {type: "ready", ms, fetched} | {type: "error", message}
 *               {type: "tokens", seq, ids: Int32Array, lens: Uint16Array, bytes: Uint8Array, ms}
 *               lens[i]: how many of `bytes` token i holds (its raw bytes, in order). */

let tokenizer = null;
let pieceBytes = null;   // token string -> its bytes (Uint8Array)
const special = new Map();  // added token id -> its content
const encoder = new TextEncoder();

/* GPT-2's bytes_to_unicode, inverted: byte-level BPE writes each byte as one character
 * (generator/tokens.py does the same in Python). */
function byteDecoder() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const table = new Map();
  bs.forEach((b, i) => table.set(String.fromCharCode(cs[i]), b));
  return table;
}

function byteLevelBytes(table) {
  return (piece) => {
    const out = new Uint8Array(piece.length);
    let i = 0;
    for (const ch of piece) {
      const b = table.get(ch);
      if (b === undefined) return encoder.encode(piece);  // not a byte-level piece: its text
      out[i++] = b;
    }
    return out.subarray(0, i);
  };
}

/* Tokenizers that are not byte-level (SentencePiece-style): "▁" is a space and "<0xE5>" a byte
 * (byte fallback); any other piece is its own text. */
function plainBytes(piece) {
  const hex = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
  if (hex) return Uint8Array.of(parseInt(hex[1], 16));
  return encoder.encode(piece.replace(/\u2581/g, " "));
}

async function load(msg) {
  const t0 = performance.now();
  const [lib, json] = await Promise.all([
    import(msg.library),
    fetch(msg.tokenizer).then((r) => {
      if (!r.ok) throw new Error(`${msg.tokenizer}: HTTP ${r.status}`);
      return r.json();
    }),
  ]);
  const t1 = performance.now();
  for (const t of json.added_tokens || []) special.set(t.id, t.content);
  const byteLevel = JSON.stringify(json.decoder || null).includes('"ByteLevel"');
  pieceBytes = byteLevel ? byteLevelBytes(byteDecoder()) : plainBytes;
  tokenizer = new lib.Tokenizer(json, {});
  // The first encode compiles the pre-tokenizer's patterns: do it now, not on the first keystroke.
  tokenizer.encode("a", { add_special_tokens: false });
  // ms: from the load message to ready; fetched: how long the library and the file took to arrive
  // (parsed); the rest is building the tokenizer (benchmarks/tokenize_bench.py reports both).
  self.postMessage({ type: "ready", ms: performance.now() - t0, fetched: t1 - t0 });
}

function encode(msg) {
  const t0 = performance.now();
  const enc = tokenizer.encode(msg.text, { add_special_tokens: false });
  const n = enc.ids.length;
  const ids = Int32Array.from(enc.ids);
  const lens = new Uint16Array(n);
  const parts = new Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const b = special.has(ids[i]) ? encoder.encode(special.get(ids[i])) : pieceBytes(enc.tokens[i]);
    parts[i] = b;
    lens[i] = b.length;
    total += b.length;
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const b of parts) { bytes.set(b, at); at += b.length; }
  self.postMessage({ type: "tokens", seq: msg.seq, ids, lens, bytes, ms: performance.now() - t0 },
                   [ids.buffer, lens.buffer, bytes.buffer]);
}

self.onmessage = (event) => {
  const msg = event.data;
  try {
    if (msg.type === "load") {
      load(msg).catch((e) => self.postMessage({ type: "error", message: String(e && e.message || e) }));
    } else if (msg.type === "encode") {
      encode(msg);
    }
  } catch (e) {
    self.postMessage({ type: "error", message: String(e && e.message || e), seq: msg.seq });
  }
};
