/* Model Atlas page script: draws a page's Altair (Vega-Lite) charts from the data files it
 * fetches, when each chart scrolls into view; hands the attention heatmaps and the head
 * thumbnails of prompt pages to heatmap.js and thumbs.js (which decode with the shared codec,
 * attention-codec.js); keeps the URL and the attention selectors in step
 * (?model=M&layer=L&head=H, generator/layout.py head_query); re-themes every chart when the page
 * switches between light and dark. Every URL comes from the data attributes render writes into
 * the page (generator/layout.py). Vega, Vega-Lite and vega-embed come from the site's vendored
 * bundle, which this script loads itself, only on pages that hold a Vega chart (its URL is the
 * chart elements' data-vega); nothing is fetched from outside the site. Also drives the direct
 * logit attribution view (position, target, the list of the largest contributors, each head's
 * name a link to its page; a click on a head in the grid opens its attention), and the one
 * selected position of a prompt page (the `atlas:position` event, ?pos=P): every view indexed by
 * position shows a window around it. */
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

  // Each URL is fetched once: `load(url)` the first time, its promise after.
  function cached(url, load) {
    if (!cache.has(url)) cache.set(url, load(url));
    return cache.get(url);
  }

  function getJSON(url) {
    return cached(url, () => fetch(url).then((r) => {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    }));
  }

  // One head's attention file (gzipped JSON, AtlasCodec.fetchHead).
  function getHead(url) {
    return cached(url, AtlasCodec.fetchHead);
  }

  function showError(el, err) {
    el.textContent = "Could not draw this chart: " + err.message;
    el.classList.add("atlas-error");
  }

  // The first chart drawn: what may wait until then (the token files, for a selection nobody has
  // made yet) does, so that it does not compete with the first view for the network and the CPU.
  let firstChartDrawn;
  const firstChart = new Promise((resolve) => { firstChartDrawn = resolve; });

  function markFirstChart() {
    // For benchmarks/page_bench.py: when the page first showed a chart.
    if (!performance.getEntriesByName("atlas-first-chart").length) {
      performance.mark("atlas-first-chart");
    }
    firstChartDrawn();
  }

  // The first chart, or a few seconds if none is drawn (a page whose charts all failed).
  function afterFirstChart() {
    return Promise.race([firstChart, new Promise((resolve) => setTimeout(resolve, 3000))]);
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
      // A chart indexed by position (its spec has the window params, generator/charts.py) in a
      // model's column shows the window around the selected position and follows it.
      const holder = box.closest("[data-positions-of]");
      const window_ = holder && (spec.params || []).some((p) => p.name === "win_lo")
        ? await positionWindow(holder, el) : null;
      let shown = null;
      const show = async () => {
        // Redrawn in the other colour scheme: the old view's timers and listeners go with it.
        if (shown) shown.finalize();
        const values = window_ ? Object.assign({}, params, window_.params()) : params;
        const result = shown = await embed(el, spec, data, values);
        if (window_) window_.drawn(result.view);
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
        // The head's own page (generator/layout.py head_page, placeholders LAYER and HEAD).
        const a = document.createElement("a");
        a.href = box.dataset.headPage.replace("{layer}", head[1]).replace("{head}", head[2]);
        a.textContent = name;
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
    const model = box.dataset.model;
    try {
      const [spec, data] = await Promise.all([getJSON(box.dataset.spec), getJSON(box.dataset.src)]);
      await tokensReady();
      // The position list is the window around the selected position (render writes the first).
      const options = (pos) => {
        const [lo, hi] = windowAround(pos, data.positions.length, POSITION_WINDOW);
        posSel.replaceChildren(...data.positions.slice(lo, hi + 1).map((p) => {
          const option = document.createElement("option");
          option.value = String(p.i);
          option.textContent = p.label;
          return option;
        }));
        posSel.value = String(pos);
      };
      options(positionFor(model));
      const rows = () => dlaRows(data[targetSel.value][Number(posSel.value)], data.layers,
                                 data.heads);
      let view = null;
      const show = async () => {
        view = (await embed(el, spec, { dla: rows() })).view;
        view.addEventListener("click", (event, item) => {
          if (!item || !item.datum || item.datum.head === undefined) return;
          openHead(model, item.datum.layer, item.datum.head, true, Number(posSel.value));
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
      el.dataset.position = posSel.value;
      el.dataset.target = targetSel.value;
      posSel.addEventListener("change", () => choose(model, Number(posSel.value), "attribution"));
      targetSel.addEventListener("change", () => update().catch((e) => showError(el, e)));
      document.addEventListener("atlas:position", () => {
        const pos = positionFor(model);
        if (pos === null) return;
        options(pos);
        update().catch((e) => showError(el, e));
      });
      // A chart's colours are fixed when it is drawn: draw it again in the other scheme.
      onTheme(() => show().catch((err) => showError(el, err)));
    } catch (err) { showError(el, err); }
  }

  // --- the selected position ---------------------------------------------------------------------
  // One selected position for the page (issue 16): choosing a token anywhere (a chip, a row of
  // the predictions, a column of the lens, a bar of the surprisal, the attribution's position, a
  // row or a segment of the comparison) selects it in every view. `choose` records it, writes it
  // into the URL (?model=M&layer=L&head=H&pos=P, generator/layout.py head_query) and dispatches
  //   document "atlas:position", detail {pos, source, model}
  // where pos is a position of `model`'s tokens (prompt and continuation counted together). The
  // two models tokenize the same text differently: a view of another model shows
  // positionFor(itsModel), the token of its own that covers the same character. Until a token is
  // chosen, every view shows its column's data-selected (the last prompt token).
  const POSITION_WINDOW = 24;   // generator/pagedata.py POSITION_WINDOW
  const AGREEMENT_WINDOW = 12;  // generator/render.py AGREEMENT_WINDOW
  const LENS_CELL = 48;         // the lens's column width (generator/charts.py lens_chart)
  const selection = { model: null, pos: null };
  const tokensOf = new Map();   // model slug -> its token rows (i, start, end, generated)
  let tokensLoaded = null;

  // The first and last position of the window of `size` around `pos` among `length` (inclusive).
  // Mirrors generator/pagedata.py position_window.
  function windowAround(pos, length, size) {
    const lo = Math.min(Math.max(pos - Math.floor(size / 2), 0), Math.max(length - size, 0));
    return [lo, Math.min(length, lo + size) - 1];
  }

  // The prompt pages' model columns (the tokenize page has data-tokens-of columns too, but no
  // token file: its tokens are made in the page).
  function columns() { return [...document.querySelectorAll("[data-tokens-of][data-tokens]")]; }

  function tokensReady() {
    if (!tokensLoaded) {
      tokensLoaded = Promise.all(columns().map(async (col) => {
        tokensOf.set(col.dataset.tokensOf, (await getJSON(col.dataset.tokens)).tokens);
      }));
    }
    return tokensLoaded;
  }

  function promptLength(tokens) { return tokens.filter((t) => !t.generated).length; }

  // The selected position in `model`'s tokens (null before the tokens are loaded).
  function positionFor(model) {
    if (selection.model === null) {
      const col = document.querySelector('[data-tokens-of="' + model + '"]');
      return col ? Number(col.dataset.selected) : null;
    }
    if (model === selection.model) return selection.pos;
    const from = tokensOf.get(selection.model), to = tokensOf.get(model);
    if (!from || !to || !to.length) return null;
    const t = from[selection.pos], nFrom = promptLength(from), nTo = promptLength(to);
    // A generated token: the same step of the other model's continuation.
    if (t.generated) return Math.min(to.length - 1, nTo + (selection.pos - nFrom));
    // A prompt token: the other model's first token that ends at or after its last character.
    for (let j = 0; j < nTo; j++) if (to[j].end >= t.end) return j;
    return Math.max(0, nTo - 1);
  }

  // The selected token's characters in the prompt ([start, end), null for a generated token).
  function selectedChars() {
    const model = selection.model || (columns()[0] && columns()[0].dataset.tokensOf);
    const tokens = tokensOf.get(model), pos = positionFor(model);
    if (!tokens || pos === null || !tokens[pos] || tokens[pos].generated) return null;
    return [tokens[pos].start, tokens[pos].end];
  }

  async function choose(model, pos, source) {
    await tokensReady();
    const tokens = tokensOf.get(model);
    if (!tokens || !Number.isInteger(pos) || pos < 0 || pos >= tokens.length) return;
    selection.model = model;
    selection.pos = pos;
    writeURL(model, pos);
    document.dispatchEvent(new CustomEvent("atlas:position", { detail: { pos, source, model } }));
  }

  // The URL names the selected position with its model's layer and head (as followURL does).
  function writeURL(model, pos) {
    const q = new URLSearchParams(location.search);
    q.set("model", model);
    const box = attentionBox(model);
    if (box) {
      q.set("layer", box.querySelector(".atlas-layer").value);
      q.set("head", box.querySelector(".atlas-head").value);
    }
    q.set("pos", String(pos));
    const hash = /(^|&)(layer|head|model|pos)=/.test(location.hash.slice(1)) ? "" : location.hash;
    history.replaceState(history.state, "", location.pathname + "?" + q.toString() + hash);
  }

  // The window of one position-indexed Vega chart (drawPlain): its params now, and once drawn,
  // clicks that choose a position and a view that follows the selection.
  async function positionWindow(holder, el) {
    await tokensReady();
    const model = holder.dataset.positionsOf, length = tokensOf.get(model).length;
    const lens = holder.classList.contains("atlas-wide");
    // The lens shows as many columns as its frame holds (its labels take about 120 px).
    const size = () => (lens ? Math.max(8, Math.floor((holder.clientWidth - 120) / LENS_CELL))
      : POSITION_WINDOW);
    const params = () => {
      const pos = positionFor(model), [lo, hi] = windowAround(pos, length, size());
      el.dataset.position = String(pos);
      el.dataset.window = lo + "-" + hi;
      return { win_lo: lo, win_hi: hi, sel_pos: pos };
    };
    let view = null;
    document.addEventListener("atlas:position", () => {
      if (!view) return;
      const p = params();
      view.signal("win_lo", p.win_lo).signal("win_hi", p.win_hi).signal("sel_pos", p.sel_pos)
        .runAsync().catch((err) => showError(el, err));
    });
    return {
      params,
      drawn(v) {
        view = v;
        v.addEventListener("click", (event, item) => {
          const d = item && item.datum;
          if (!d) return;
          const pos = d.pos !== undefined ? d.pos : d.i;
          if (Number.isInteger(pos)) choose(model, pos, "chart");
        });
      },
    };
  }

  // Scroll `frame` (its own scroll, never the page's) so that `item` shows.
  function reveal(frame, item) {
    if (!frame || !item) return;
    const top = item.getBoundingClientRect().top - frame.getBoundingClientRect().top +
      frame.scrollTop;
    if (top < frame.scrollTop || top + item.offsetHeight > frame.scrollTop + frame.clientHeight) {
      frame.scrollTop = Math.max(0, top - frame.clientHeight / 2);
    }
  }

  // The chips: a click, or Enter or Space on a focused chip, chooses its token; the selected
  // chip of each model is outlined and scrolled into its frame.
  function mountChips() {
    for (const col of columns()) {
      const model = col.dataset.tokensOf;
      const chips = [...col.querySelectorAll(".atlas-tok[data-i]")];
      if (chips.length && !chips.some((c) => c.hasAttribute("tabindex"))) chips[0].tabIndex = 0;
      for (const chip of chips) {
        chip.addEventListener("click", () => choose(model, Number(chip.dataset.i), "chips"));
        chip.addEventListener("keydown", (event) => {
          if (event.key !== "Enter" && event.key !== " ") return;
          event.preventDefault();
          choose(model, Number(chip.dataset.i), "chips");
        });
      }
    }
  }

  function followChips() {
    for (const col of columns()) {
      const pos = positionFor(col.dataset.tokensOf);
      col.querySelectorAll(".atlas-tok.atlas-pos-on")
        .forEach((c) => c.classList.remove("atlas-pos-on"));
      const chip = col.querySelector('.atlas-tok[data-i="' + pos + '"]');
      if (!chip) continue;
      chip.classList.add("atlas-pos-on");
      reveal(col.querySelector(".atlas-tokens-frame"), chip);
    }
  }

  // The comparison: the aligned text outlines the selected token's characters, and the table
  // shows its rows around them. A click on a segment or a row chooses that model's token there.
  function mountComparison() {
    const names = columns().map((c) => c.dataset.tokensOf);
    const byChar = (model, char, atEnd) => {
      const tokens = tokensOf.get(model) || [];
      const n = promptLength(tokens);
      for (let j = 0; j < n; j++) {
        if (atEnd ? tokens[j].end >= char : tokens[j].end > char) return j;
      }
      return n - 1;
    };
    // Delegated: a long prompt's aligned text and table rows arrive later (loadPart).
    document.addEventListener("click", async (event) => {
      const seg = event.target.closest(".atlas-aligned-row [data-char]");
      const tr = event.target.closest("table.atlas-agreement tr[data-char]");
      if (seg) {
        const row = seg.closest(".atlas-aligned-row");
        const r = [...row.parentElement.querySelectorAll(".atlas-aligned-row")].indexOf(row);
        if (!names[r]) return;
        await tokensReady();
        choose(names[r], byChar(names[r], Number(seg.dataset.char), false), "comparison");
      } else if (tr) {
        await tokensReady();
        choose(names[0], byChar(names[0], Number(tr.dataset.char), true), "comparison");
      }
    });
    mountParts();
  }

  // A long prompt's page keeps the bulk of its comparison (the aligned text, the agreement rows
  // outside the first window) in files of their own (generator/layout.py prompt_part), marked
  // data-part="URL" here: each is put in place when the reader comes near it, or, for the table,
  // when the selected position moves.
  const partsLoading = new Map();
  function loadPart(el) {
    if (!el.dataset.part) return Promise.resolve();
    if (!partsLoading.has(el)) {
      partsLoading.set(el, getJSON(el.dataset.part).then((data) => {
        el.innerHTML = data.html;   // markup rendered and escaped by the generator's templates
        delete el.dataset.part;
        followComparison();
      }).catch((err) => console.warn(err)));
    }
    return partsLoading.get(el);
  }

  function mountParts() {
    whenNear(document.querySelectorAll("[data-part]"), "600px", loadPart);
  }

  // `act(el)` once for each of `els`, when it comes within `margin` of the viewport (at once
  // where the browser cannot tell).
  function whenNear(els, margin, act) {
    if (!("IntersectionObserver" in window)) { els.forEach(act); return; }
    const near = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        near.unobserve(entry.target);
        act(entry.target);
      }
    }, { rootMargin: margin + " 0px" });
    els.forEach((el) => near.observe(el));
  }

  // A long prompt's chips come compact (render.py FULL_CHIPS, templates/_macros.j2 chip): bare
  // spans in token order. Each becomes a full chip (class atlas-tok, data-i) before any view
  // reads the chips (heatmap.js binds them once drawn), and gets its title from its token row
  // when pointed at or focused (chipTitle).
  function fullChips() {
    document.querySelectorAll(".atlas-tokens[data-compact]").forEach((holder) => {
      const chips = holder.querySelectorAll(
        ":scope > span:not(.atlas-char), :scope > .atlas-char > .atlas-char-pieces > span");
      const heat = (holder.dataset.heat || "").split(",");
      chips.forEach((chip, i) => {
        chip.classList.add("atlas-tok");
        chip.dataset.i = String(i);
        if (heat[i]) chip.style.setProperty("--atlas-s", heat[i]);
      });
      delete holder.dataset.compact;
      delete holder.dataset.heat;
    });
  }

  // A chip without a title in the markup (a compact one) gets the one templates/_macros.j2 chip
  // writes, made from its token row.
  function chipTitle(event) {
    const chip = event.target.closest && event.target.closest(".atlas-tok[data-i]");
    const col = chip && chip.closest("[data-tokens-of]");
    if (!col || chip.hasAttribute("title")) return;
    const t = (tokensOf.get(col.dataset.tokensOf) || [])[Number(chip.dataset.i)];
    if (!t) return;
    chip.title = "#" + t.i + " · id " + t.id + (t.generated ? " · generated" : "") +
      (t.surprisal === null ? "" : " · surprisal " + t.surprisal.toFixed(3) + " bits (rank " +
        t.rank + ")");
  }

  function followComparison() {
    const chars = selectedChars();
    document.querySelectorAll(".atlas-aligned-text > span[data-char]").forEach((seg) => {
      const c = Number(seg.dataset.char);
      seg.classList.toggle("atlas-pos-on", chars !== null && c >= chars[0] && c < chars[1]);
    });
    document.querySelectorAll(".atlas-aligned-text").forEach((frame) => {
      reveal(frame, frame.querySelector(".atlas-pos-on"));
    });
    const table = document.querySelector("table.atlas-agreement");
    if (table && table.dataset.part && selection.model !== null) { loadPart(table); return; }
    const rows = [...document.querySelectorAll("table.atlas-agreement tr[data-char]")];
    if (!rows.length || (table && table.dataset.part)) return;
    // The row at the selected token's end, or the first after it (a generated token: the last).
    let at = rows.length - 1;
    if (chars !== null) {
      const found = rows.findIndex((tr) => Number(tr.dataset.char) >= chars[1]);
      if (found >= 0) at = found;
    }
    const [lo, hi] = windowAround(at, rows.length, AGREEMENT_WINDOW);
    rows.forEach((tr, i) => {
      tr.hidden = i < lo || i > hi;
      tr.classList.toggle("atlas-pos-on", chars !== null && Number(tr.dataset.char) === chars[1]);
    });
  }

  function mountPositions() {
    if (!columns().length) return;
    mountChips();
    mountComparison();
    for (const col of columns()) {
      col.addEventListener("mouseover", chipTitle);
      col.addEventListener("focusin", chipTitle);
    }
    document.addEventListener("atlas:position", () => { followChips(); followComparison(); });
    // Until a token is chosen the views show each column's data-selected: the token files (a
    // long prompt's are hundreds of kB) can wait for the first chart.
    afterFirstChart().then(tokensReady).then(() => { followChips(); followComparison(); })
      .catch((err) => console.warn(err));
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
    const layer = get("layer"), head = get("head"), model = get("model"), pos = get("pos");
    if (pos !== null && /^\d+$/.test(pos) && columns().length) {
      const cols = columns().map((c) => c.dataset.tokensOf);
      choose(cols.includes(model) ? model : cols[0], Number(pos), "url")
        .catch((err) => console.warn(err));
    }
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
        // A selected position is written in this model's tokens.
        if (selection.model !== null) q.set("pos", String(positionFor(box.dataset.model)));
        const hash = /(^|&)(layer|head|model|pos)=/.test(location.hash.slice(1)) ? ""
          : location.hash;
        history.replaceState(history.state, "", location.pathname + "?" + q.toString() + hash);
      };
      layerSel.addEventListener("change", update);
      headSel.addEventListener("change", update);
    });
  }

  // Whether a position has been chosen (by the reader or the address), not the default one.
  function chosen() { return selection.model !== null; }
  const page = { getJSON, getHead, showError, markFirstChart, theme, onTheme, openHead, choose,
                 chosen, positionFor, windowAround };
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
    fullChips();
    watchTheme();
    followURL();
    mountPositions();
    if (window.AtlasThumbs) {
      document.querySelectorAll(".atlas-thumbs").forEach((h) => window.AtlasThumbs.mount(h, page));
    }
    // Charts are drawn (and their data fetched) only when they come near the viewport.
    whenNear(document.querySelectorAll(CHARTS), "400px", draw);
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
  fullChips();
  early();
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else drawAll();
})();
