// Token ids of many texts under each tokenizer, as the "Tokenize your own text" page computes
// them: the vendored @huggingface/tokenizers (generator/assets/vendor/), each model's
// tokenizer.json as the site ships it, encode(text, {add_special_tokens: false}).
// Usage: node tokenize_ids.mjs LIBRARY INPUT.json OUTPUT.json
//   INPUT:  {"tokenizers": {"<slug>": "<path of tokenizer.json>"}, "texts": ["...", ...]}
//   OUTPUT: {"<slug>": [[id, ...], ...]}, one list per text, in order.
// One process for every text and tokenizer (tests/test_tokenize.py), so Node starts once.
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [library, input, output] = process.argv.slice(2);
const { Tokenizer } = await import(pathToFileURL(library).href);
const job = JSON.parse(readFileSync(input, "utf8"));
const out = {};
for (const [slug, path] of Object.entries(job.tokenizers)) {
  const tokenizer = new Tokenizer(JSON.parse(readFileSync(path, "utf8")), {});
  out[slug] = job.texts.map((t) => tokenizer.encode(t, { add_special_tokens: false }).ids);
}
writeFileSync(output, JSON.stringify(out));
