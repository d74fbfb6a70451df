"""docs/walkthrough.ipynb becomes the page walkthrough.md: run top to bottom at build time (git keeps it without
outputs), then written as Markdown with its printed outputs and its figures (walkthrough_files/*.png), so its
equations go through the same math rendering as every other page. Pages link the notebook itself
(``walkthrough.ipynb``, which a repository browser shows); on the site such a link goes to the page.

``BP_TORCH_DOCS_STEPS`` sets the walkthrough's training steps (its own default otherwise); the notebook reads real
MNIST when it finds it (``$BP_TORCH_DATA``) and a small synthetic set otherwise, as it says on the page.
"""

import os
import re
from pathlib import Path

import nbformat
from mkdocs.structure.files import File
from nbclient import NotebookClient
from nbconvert import MarkdownExporter

NOTEBOOK = "walkthrough.ipynb"
TIMEOUT_S = 1200  # one cell: the walkthrough's short training run is the longest


def run(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    saved = {name: os.environ.get(name) for name in ("MPLBACKEND", "BP_TORCH_FIGURES", "WALKTHROUGH_STEPS")}
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures become outputs, not files
    os.environ.pop("BP_TORCH_FIGURES", None)
    if os.environ.get("BP_TORCH_DOCS_STEPS"):
        os.environ["WALKTHROUGH_STEPS"] = os.environ["BP_TORCH_DOCS_STEPS"]
    try:
        resources = {"metadata": {"path": str(path.parent)}}  # the kernel starts in docs/
        NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3", resources=resources).execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return notebook


def on_files(files, config):
    source = files.get_file_from_path(NOTEBOOK)
    if source is None:
        return files
    files.remove(source)
    name = Path(NOTEBOOK).stem
    notebook = run(Path(source.abs_src_path))
    body, resources = MarkdownExporter().from_notebook_node(
        notebook, resources={"output_files_dir": f"{name}_files", "unique_key": name}
    )
    note = f"*Generated from `docs/{NOTEBOOK}` (itself from `docs/{name}.py`), run when this site was built.*\n\n"
    heading, _, rest = body.partition("\n")  # the note goes under the notebook's title
    files.append(File.generated(config, f"{name}.md", content=f"{heading}\n\n{note}{rest}"))
    for uri, data in resources["outputs"].items():
        files.append(File.generated(config, uri, content=data))
    return files


def on_page_markdown(markdown, page, config, files):
    name = Path(NOTEBOOK).stem
    return re.sub(rf"\]\(((?:\.\./)*){re.escape(NOTEBOOK)}([#)])", rf"](\1{name}.md\2", markdown)
