"""Links from a page to the repository's code land on a page of that file, at the line.

The docs link code as the repository shows it: ``[conv.py#L51](../bp_torch/autograd/conv.py#L51)``, a path relative
to the page (tests/test_docs.py and docs/relink.py keep each link on the line that computes its equation). The site
cannot serve ``../bp_torch``, so each Python file of the repository becomes a page of its own,
``source/bp_torch/autograd/conv.py.html``, every line numbered and anchored (``#L51``; a span ``#L51-L53`` is
highlighted whole), and each such link is rewritten to point there.
"""

import html
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ["bp_torch", "benchmarks", "docs"]  # the code a page may link
# a markdown link target: a relative path with an optional #Lnn or #Lnn-Lmm
LINK = re.compile(r"\]\((?P<path>[\w./-]+\.py)(?P<lines>#L\d+(?:-L\d+)?)?\)")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{path} · bp_torch</title>
<style>
body {{ margin: 0; font: 14px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #24292f; }}
header {{ padding: .6em 1em; background: #f6f8fa; border-bottom: 1px solid #d0d7de; font-family: sans-serif; }}
pre {{ margin: 0; padding: .5em 0; }}
.line {{ display: block; padding-right: 1em; }}
.line > a {{ display: inline-block; width: 4em; padding-right: 1em; text-align: right; color: #8c959f;
  text-decoration: none; user-select: none; }}
.line:target, .line.marked {{ background: #fff8c5; }}
{style}
</style></head>
<body><header><a href="{home}">bp_torch</a> · <code>{path}</code></header>
<pre class="highlight">{lines}</pre>
<script>
// #L51 or #L51-L53: mark the line or the whole span and bring it to the middle of the window, code above it in view
function mark() {{
  document.querySelectorAll(".marked").forEach((line) => line.classList.remove("marked"));
  const span = /^#L(\\d+)(?:-L(\\d+))?$/.exec(location.hash);
  if (!span) return;
  for (let n = +span[1]; n <= +(span[2] || span[1]); n++) document.getElementById("L" + n)?.classList.add("marked");
  document.getElementById("L" + span[1])?.scrollIntoView({{ block: "center" }});
}}
window.addEventListener("hashchange", mark);
mark();
</script>
</body></html>
"""


def source_uri(path: str) -> str:
    """The site's page for a repository file: bp_torch/nn.py -> source/bp_torch/nn.py.html."""
    return f"source/{path}.html"


def render(path: str) -> str:
    """A Python file as a page: highlighted, one ``<span id="Lnn">`` per line, numbered."""
    text = (ROOT / path).read_text()
    # keep leading and trailing blank lines: line n of the page must be line n of the file
    lexer = PythonLexer(stripnl=False, ensurenl=True)
    formatter = HtmlFormatter(nowrap=True)  # one self-contained line of HTML per line of source
    lines = highlight(text, lexer, formatter).splitlines()
    assert len(lines) == len(text.splitlines()), path
    numbered = "".join(
        f'<span class="line" id="L{n}"><a href="#L{n}">{n}</a>{line}</span>' for n, line in enumerate(lines, 1)
    )
    depth = path.count("/") + 1  # source/ and the file's folders
    home = "../" * depth + "index.html"
    return PAGE.format(path=html.escape(path), style=formatter.get_style_defs(".highlight"), home=home, lines=numbered)


def on_files(files, config):
    for folder in FOLDERS:
        for file in sorted((ROOT / folder).rglob("*.py")):
            path = file.relative_to(ROOT).as_posix()
            files.append(File.generated(config, source_uri(path), content=render(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Rewrite each link to a repository .py file (relative to the page's file in docs/) to that file's page."""
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(link: re.Match) -> str:
        target = posixpath.normpath(posixpath.join("docs", page_dir, link["path"]))
        if target.startswith("../") or not (ROOT / target).is_file():
            return link[0]  # not a file of the repository: left to the link check
        relative = posixpath.relpath(source_uri(target), page_dir or ".")
        return f"]({relative}{link['lines'] or ''})"

    return LINK.sub(rewrite, markdown)
