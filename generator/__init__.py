"""Model Atlas: precomputed, interactive reports of how transformer language models read text.

The pipeline has two stages behind a thin CLI (`generator.cli`):

- compute (`generator.compute`, imports torch): prompt sets -> one JSON artifact per (model, prompt);
- render (`generator.render`, never imports torch): artifacts -> Markdown pages, Altair charts and
  data files -> an MkDocs Material site.

The artifact format, the contract between the two, is defined once in `generator.schema`.
"""

__version__ = "0.1.0"
