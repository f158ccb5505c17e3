"""The `model-atlas` command: parses options, calls the stages, turns domain errors into messages.

compute (torch) and render (no torch) are imported only by the commands that need them, so
`model-atlas render` works on a machine without torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from . import layout
from .errors import AtlasError

DEFAULT_MODELS = ("gpt2", "Qwen/Qwen2.5-0.5B")


def log(message: str) -> None:
    click.echo(message, err=True)


def domain_errors(f: Callable) -> Callable:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except AtlasError as e:
            raise click.ClickException(str(e)) from None
    return wrapper


def _options(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


common_options = _options(
    click.option("--prompts", "prompt_paths", multiple=True, type=click.Path(path_type=Path),
                 help="Prompt-set YAML file or directory of them (repeatable). "
                      "Default: the curated sets in prompt_sets/."),
    click.option("--model", "models", multiple=True, metavar="ID_OR_DIR",
                 help="Hugging Face model id or local checkpoint directory (repeatable). "
                      "Default: gpt2 and Qwen/Qwen2.5-0.5B. Files and URLs name it by its "
                      "slug: a directory by its own name, a hub id whole (render finds it "
                      "without the checkpoint: give render the same --model as compute)."),
    click.option("--demo", is_flag=True,
                 help="Use the offline demo: tiny GPT-2 and Qwen2 models whose weights are "
                      "constructed in code (planted heads, random elsewhere) with the real "
                      "tokenizers, no network needed. Pages say the weights are not learned."),
    click.option("--build-dir", type=click.Path(path_type=Path), default=Path("build"),
                 show_default=True, help="Where artifacts and generated pages go."),
)

compute_options = _options(
    click.option("--device", default="auto", show_default=True,
                 help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
    click.option("--dtype", default="auto", show_default=True,
                 help="auto (float32; on a GPU bfloat16 only for a model whose float32 weights "
                      "would take more than half its free memory), float32, float16 or bfloat16. "
                      "Stored attention is the float32 softmax of the scores in every dtype."),
    click.option("--revision", default="main", show_default=True,
                 help="Hub revision (branch, tag or commit) of hub models."),
    click.option("--top-k", type=int, default=10, show_default=True,
                 help="Predictions stored per position."),
    click.option("--lens-top-k", type=int, default=3, show_default=True,
                 help="Logit-lens predictions stored per layer and position."),
    click.option("--continuation", type=int, default=8, show_default=True,
                 help="Greedy tokens generated after each prompt and analysed with it (0: none)."),
    click.option("--shard", default=None, metavar="K/N",
                 help="Compute only the K-th of N deterministic shares of the prompts."),
    click.option("--device-map", default=None,
                 help="Passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Prompts per batch (default: as many as the memory budget holds). Float32 "
                      "results depend on a batch's shape by about 1e-6, so after an interrupted "
                      "build the recomputed prompts, batched otherwise, can differ from an "
                      "uninterrupted build in the last stored digit; with 1, every prompt runs "
                      "alone and any build, resumed or sharded, is byte-identical."),
)

out_option = click.option("--out", type=click.Path(path_type=Path), default=Path("site"),
                          show_default=True, help="Directory the built site is written to.")

wait_option = click.option("--no-wait", is_flag=True,
                           help="If another command is writing into --build-dir, fail at once, "
                                "naming it, instead of waiting for it to finish.")


def _prompt_sets(paths: tuple[Path, ...]) -> list:
    from .prompts import default_prompt_dir, load_prompt_sets
    return load_prompt_sets(paths or [default_prompt_dir()])


def _model_ids(models: tuple[str, ...], demo: bool, build_dir: Path) -> list[str]:
    if demo and models:
        raise click.UsageError("--demo uses the two demo models; leave out --model.")
    if demo:
        from .demo import ensure_demo_models
        return [str(p) for p in ensure_demo_models(build_dir / "demo-models", log)]
    return list(models or DEFAULT_MODELS)


def _slugs(models: tuple[str, ...], demo: bool, build_dir: Path) -> list[str]:
    from .store import render_slug
    if demo:
        from .demo import DEMO_SPECS
        return list(DEMO_SPECS)
    return [render_slug(m, build_dir / "artifacts") for m in (models or DEFAULT_MODELS)]


def check_dirs(build_dir: Path, out: Path | None = None) -> None:
    """Refuse, before any work, a --build-dir or --out that is a file, and an --out that the
    build's replace-the-whole-directory swap would delete wrongly."""
    for path, option in ((build_dir, "--build-dir"), (out, "--out")):
        if path is not None and path.exists() and not path.is_dir():
            raise click.BadParameter(f"{path} is a file, not a directory. Give a directory (it is "
                                     f"created if missing).", param_hint=option)
    if out is None or not out.is_dir():
        return
    resolved = out.resolve()
    for inner in (build_dir.resolve(), Path.cwd().resolve()):
        if inner == resolved or resolved in inner.parents:
            raise click.BadParameter(f"{out} contains {inner}, and a build replaces --out whole. "
                                     f"Give a directory of its own, like site/.", param_hint="--out")
    home = layout.served(layout.HOME)
    if any(out.iterdir()) and not (out / home).is_file():
        raise click.BadParameter(f"{out} is a non-empty directory that is not a built site (no "
                                 f"{home}), and a build replaces --out whole. Give a new or "
                                 f"empty directory, or a previous site.", param_hint="--out")


@contextlib.contextmanager
def holding(build_dir: Path, no_wait: bool) -> Iterator[None]:
    """The build directory's lock (generator/lock.py) for the body: one writer at a time."""
    from .lock import build_dir_lock, command_line
    check_dirs(build_dir)
    ctx = click.get_current_context(silent=True)
    command = command_line(ctx.info_name if ctx else None)
    with build_dir_lock(build_dir, command, wait=not no_wait, log=log):
        yield


def do_compute(prompt_paths, models, demo, build_dir, device, dtype, revision, top_k, lens_top_k,
               continuation, shard, device_map, batch_size, out=None) -> None:
    from .compute import Settings, Shard, run_compute
    from .space import Space
    settings = Settings(top_k=top_k, lens_top_k=lens_top_k, continuation=continuation)
    shard_ = Shard.parse(shard)
    sets = _prompt_sets(prompt_paths)
    check_dirs(build_dir)
    space = Space(build_dir, out, demo)
    with space.writing("the demo checkpoints", build_dir / "demo-models"):
        model_ids = _model_ids(models, demo, build_dir)
    with space.writing("the artifacts", build_dir / "artifacts"):
        report = run_compute(model_ids, sets, build_dir / "artifacts", settings, device, dtype,
                             shard_, log, revision, device_map, batch_size)
    if report.failures:
        raise click.ClickException(
            f"{len(report.failures)} unit(s) failed; the {report.computed + report.reused} other "
            f"artifacts are kept:\n  " + "\n  ".join(report.failures))


def do_render(prompt_paths, models, demo, build_dir, out) -> None:
    from .render import discard_unfinished, load_catalog, render_docs
    from .site import build_site, vendor_bundle, write_mkdocs_config
    from .space import Space
    check_dirs(build_dir, out)
    sets = _prompt_sets(prompt_paths)
    catalog = load_catalog(build_dir / "artifacts", sets, _slugs(models, demo, build_dir), log)
    space = Space(build_dir, out, demo)
    try:
        with space.writing("the generated pages", build_dir / "docs"):
            nav = render_docs(catalog, build_dir / "docs", vendor_bundle(build_dir), log)
            write_mkdocs_config(build_dir, nav)
    except BaseException:
        discard_unfinished(build_dir / "docs")  # the last complete docs tree and site stay
        raise
    with space.writing("the site", out):
        build_site(build_dir, out, log)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="model-atlas")
def main() -> None:
    """Model Atlas: precomputed, interactive reports of how GPT-2 and Qwen2.5 read text.

    `build` runs everything; `compute` and `render` run one stage each. Start with
    `model-atlas build --demo`, which needs no network.
    """


@main.command()
@common_options
@compute_options
@wait_option
@domain_errors
def compute(prompt_paths, models, demo, build_dir, no_wait, **kw) -> None:
    """Run the prompt sets through the models; write one JSON artifact per (model, prompt).

    Unchanged prompts are not recomputed. Needs torch.
    """
    _prompt_sets(prompt_paths)  # bad prompt sets fail before the build directory is touched
    with holding(build_dir, no_wait):
        do_compute(prompt_paths, models, demo, build_dir, **kw)


@main.command()
@common_options
@out_option
@wait_option
@domain_errors
def render(prompt_paths, models, demo, build_dir, out, no_wait) -> None:
    """Render the artifacts into pages and build the static site with MkDocs. No torch needed."""
    _prompt_sets(prompt_paths)  # bad prompt sets fail before the build directory is touched
    check_dirs(build_dir, out)
    with holding(build_dir, no_wait):
        do_render(prompt_paths, models, demo, build_dir, out)


@main.command()
@common_options
@compute_options
@out_option
@wait_option
@domain_errors
def build(prompt_paths, models, demo, build_dir, out, no_wait, **kw) -> None:
    """compute + render + mkdocs build: the whole site into --out (default site/)."""
    _prompt_sets(prompt_paths)  # bad prompt sets fail before the build directory is touched
    check_dirs(build_dir, out)
    with holding(build_dir, no_wait):
        do_compute(prompt_paths, models, demo, build_dir, out=out, **kw)
        do_render(prompt_paths, models, demo, build_dir, out)
    log(f"done: open {out / layout.served(layout.HOME)} through a web server, e.g. "
        f"`model-atlas serve`")


@main.command()
@common_options
@compute_options
@out_option
@click.option("--port", type=int, default=8000, show_default=True, help="Port on 127.0.0.1.")
@click.option("--no-build", is_flag=True, help="Serve --out as it is, without building first.")
@wait_option
@domain_errors
def serve(prompt_paths, models, demo, build_dir, out, port, no_build, no_wait, **kw) -> None:
    """Build the site, then serve it on http://127.0.0.1:PORT/ until interrupted."""
    import http.server
    if not no_build:
        _prompt_sets(prompt_paths)  # bad prompt sets fail before the build directory is touched
        check_dirs(build_dir, out)
        with holding(build_dir, no_wait):  # while it builds; serving writes nothing there
            do_compute(prompt_paths, models, demo, build_dir, out=out, **kw)
            do_render(prompt_paths, models, demo, build_dir, out)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        log(f"serving {out} on http://127.0.0.1:{port}/ (Ctrl-C to stop)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass


# How `export` lays out its files, as its --help says: the site's stable URLs (generator/layout.py).
_EXPORT_FILES = ", ".join(f"{layout.chart_file(scope, stem)}.*" for scope, stem in (
    (layout.prompt_scope("<model>", "<set>/<prompt>"), "<chart>"),
    (layout.compare_scope("<set>/<prompt>"), "cumulative"),
    (layout.model_scope("<model>"), "atlas-*"), (layout.SITE_SCOPE, "tokenizers")))


@main.command()
@click.option("--build-dir", type=click.Path(path_type=Path), default=Path("build"),
              show_default=True, help="Build directory of the last `model-atlas build` (its docs/ "
                                      "tree is read).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help=f"Directory for the files: {_EXPORT_FILES}.")
@click.option("--model", default=None, metavar="SLUG",
              help="Only this model's charts (its slug, e.g. gpt2 or qwen-qwen2.5-0.5b).")
@click.option("--prompt", default=None, metavar="SET/PROMPT",
              help="Only the charts of this prompt (set/prompt key), or of every prompt of a set.")
@click.option("--chart", default=None, metavar="NAME",
              help="Only this chart: attention, predictions, surprisal, lens, heads, groups, "
                   "cumulative, tokenizers or atlas-<metric>.")
@click.option("--layer", type=click.IntRange(min=0), default=None,
              help="Layer of the attention chart (default 0).")
@click.option("--head", type=click.IntRange(min=0), default=None,
              help="Query head of the attention chart (default 0).")
@click.option("--format", "formats", multiple=True,
              type=click.Choice(["html", "json", "svg", "png"]),
              help="File format (repeatable): html (self-contained, opens offline), json "
                   "(Vega-Lite with its data), svg, png. Default: all four.")
@domain_errors
def export(build_dir, out, model, prompt, chart, layer, head, formats) -> None:
    """Export the charts of the last build as standalone HTML, Vega-Lite JSON, SVG and PNG files.

    Needs a finished `model-atlas build` (or `render`); no torch needed.
    """
    from .export import FORMATS, export_charts
    export_charts(build_dir / "docs", out, model=model, prompt=prompt, chart=chart,
                  formats=formats or FORMATS, log=log, layer=layer, head=head)


def entry() -> None:
    """The `model-atlas` command: `main`, then the process ends at once.

    When a command returns, everything it wrote is complete (every write is atomic, the lock is
    let go); what is left is the interpreter's own teardown of torch and of every object the
    build made, over a second after a demo build. `os._exit` skips it, once the output is
    flushed. (Tests call `main` itself.)"""
    try:
        main()                                  # click's standalone mode ends in SystemExit
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    entry()
