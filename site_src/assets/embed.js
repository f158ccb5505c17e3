/* Model Atlas embed page script: draws the one chart of an embed page (embed/<scope>/<chart>.html)
 * or of a file of `model-atlas export` (the same script inlined). The spec comes from the page's
 * data-spec URL or, in an exported file, from the page itself; every URL is written into the page
 * by render (generator/layout.py). An attention page takes ?layer=L&head=H and fetches and
 * decodes that head with the shared codec (attention-codec.js); any page takes ?export=svg|png to
 * download the drawn chart. */
(function () {
  "use strict";
  var el = document.getElementById("atlas-chart");
  var params = new URLSearchParams(window.location.search);
  var OPTIONS = { actions: { export: true, source: false, compiled: false, editor: false },
                  renderer: "svg", downloadFileName: el.dataset.filename };

  function getJSON(url) {
    return fetch(url).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function choice(name, count) {
    var raw = params.get(name);
    if (raw === null || raw === "") return 0;
    var n = Number(raw);
    if (!Number.isInteger(n) || n < 0 || n >= count) {
      throw new Error(name + "=" + raw + ": valid values are 0 to " + (count - 1));
    }
    return n;
  }

  // ?layer=L&head=H: another head of the attention chart, from the site's per-head files.
  async function otherHead(spec) {
    if (!el.dataset.heads || (params.get("layer") === null && params.get("head") === null)) {
      return;
    }
    var layer = choice("layer", Number(el.dataset.nlayers));
    var head = choice("head", Number(el.dataset.nheads));
    var url = AtlasCodec.headUrl(el.dataset.heads, layer, head);
    var both = await Promise.all([getJSON(el.dataset.tokens), AtlasCodec.fetchHead(url)]);
    spec.datasets.attention = AtlasCodec.chartRows(both[1], both[0].tokens, Number(el.dataset.side));
    spec.title.text = spec.title.text.replace(/layer \d+, head \d+$/,
                                              "layer " + layer + ", head " + head);
    OPTIONS.downloadFileName = el.dataset.filename + "-L" + layer + "-H" + head;
  }

  async function draw() {
    var spec = el.dataset.spec ? await getJSON(el.dataset.spec)
      : JSON.parse(document.getElementById("atlas-spec").textContent);
    await otherHead(spec);
    var result = await vegaEmbed(el, spec, OPTIONS);
    el.dataset.rendered = "true";
    var format = params.get("export");
    if (format === "svg" || format === "png") {
      var link = document.createElement("a");
      link.href = await result.view.toImageURL(format, format === "png" ? 2 : 1);
      link.download = OPTIONS.downloadFileName + "." + format;
      document.body.appendChild(link);
      link.click();
      link.remove();
    }
  }

  draw().catch(function (err) {
    el.textContent = "Could not draw this chart: " + err.message;
    el.className = "atlas-error";
  });
})();
