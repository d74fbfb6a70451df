"""README.md fits on two screens, its links land, the examples of README and the site's pages run as written, and
the user-facing docs name no machine of ours."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
USER_DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_fits_on_two_screens():
    assert len(README.read_text().splitlines()) <= 160


def _python_blocks():
    for path in USER_DOCS:
        for number, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S)):
            yield pytest.param(block, id=f"{path.name}-{number}")


@pytest.mark.parametrize("block", list(_python_blocks()))
def test_python_examples_run(block):
    """Each ```python block of README and of the site's pages runs on its own, in a fresh interpreter, as a reader
    would paste it; a printed line it quotes in a comment is what it prints."""
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for comment in re.findall(r"print\(.*?\)  # (backward graph: .*)", block):
        assert comment in result.stdout


def test_readme_links_land():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10
    assert [link for link in local if not (ROOT / link).exists()] == []


def test_readme_quickstart_installs_the_cpu_build_first():
    text = README.read_text()
    cpu, train = text.index("--index-url https://download.pytorch.org/whl/cpu"), text.index('pip install -e ".[train]"')
    assert cpu < train


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_user_docs_name_no_machine_of_ours(path):
    """No machine paths, load figures or shared folders in what a user reads."""
    text = path.read_text()
    assert not re.search(r"/work/|shared/data|load average|\bload \d|2-core", text)
