"""The save hook of `make lab`: paper notebooks are saved as they are committed, without outputs.

JupyterLab autosaves an open notebook every two minutes, so merely reading one (and running a
cell) wrote outputs, execution counts and the kernel's version into the tracked file and left the
clone dirty. `make lab` starts JupyterLab with

    --ContentsManager.pre_save_hook=thrlab.paper.lab.pre_save_hook

a command-line option, so the user's own ~/.jupyter settings stay as they are. The hook strips
what executing a notebook adds (outputs, execution counts, the kernel's language_info, widget
state, per-cell view state) from the numbered paper notebooks (PAPER_NOTEBOOKS, the ones
`thrlab.paper.reproduce` runs) and leaves every other notebook alone, so a notebook of the user's
own keeps its outputs. The open tab keeps showing its outputs; only the file on disk is clean.
Executed copies with outputs are what `make reproduce` writes into run folders.
No torch, no thrlab imports: JupyterLab imports this module when it starts.
"""
from __future__ import annotations

from fnmatch import fnmatch
from pathlib import PurePosixPath

PAPER_NOTEBOOKS = "[0-9][0-9]_*.ipynb"  # the numbered paper notebooks in notebooks/
# Cell metadata that records how a notebook was viewed or run, never what it says: JupyterLab's
# execution timing, the classic ExecuteTime, output collapse/scroll, folded headings.
_VIEW_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled",
                  "jp-MarkdownHeadingCollapsed")


def strip_outputs(nb: dict) -> dict:
    """Remove, in place, what executing nb added; return nb. nb is the notebook's JSON (a dict, or
    an nbformat NotebookNode): code cells lose outputs and execution counts, every cell its view
    metadata, the notebook its widget state, and language_info keeps only the language's name
    (the kernel writes its Python version there)."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in _VIEW_METADATA:
            meta.pop(key, None)
    meta = nb.get("metadata", {})
    meta.pop("widgets", None)
    if isinstance(meta.get("language_info"), dict):
        meta["language_info"] = {"name": meta["language_info"].get("name", "python")}
    return nb


def is_paper_notebook(path: str) -> bool:
    """Whether a contents-API path (relative to the server's root) names a paper notebook."""
    return fnmatch(PurePosixPath(path).name, PAPER_NOTEBOOKS)


def pre_save_hook(model: dict, path: str, contents_manager=None, **kwargs) -> None:
    """jupyter_server's ContentsManager.pre_save_hook: strip a paper notebook before it is
    written (model is the contents-API model; its "content" is the notebook's JSON)."""
    if model.get("type") == "notebook" and model.get("content") and is_paper_notebook(path):
        strip_outputs(model["content"])
