"""MathJax ships with the site: its SVG build is copied from a Python package into assets/mathjax/, never loaded
from a CDN (a reader with the built site and no network sees the equations typeset)."""

from pathlib import Path

import mathjax  # the django-static-mathjax package: MathJax 3's files and nothing else
from mkdocs.structure.files import File

ES5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
# tex-svg.js holds TeX input and SVG output; the TeX extensions it loads on demand (\boldsymbol, ...) beside it
WANTED = ["tex-svg.js", "input/tex/extensions/**/*.js"]


def on_files(files, config):
    for pattern in WANTED:
        for path in sorted(ES5.glob(pattern)):
            uri = f"assets/mathjax/{path.relative_to(ES5).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
