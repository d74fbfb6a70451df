"""docs/derivation.md cannot drift from the code: its examples run, and each code link names its equation."""

import doctest
import re
from pathlib import Path

import pytest

import bp_torch.dense

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "derivation.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

LINK = re.compile(r"\]\(\.\./(bp_torch/[\w/]+\.py)#L(\d+)(?:-L(\d+))?\)")
ROW = re.compile(r"^\|\s*([AB]) (\d+(?:\s*[,–]\s*\d+)*)\s*\|")  # a table row "| B 32, 52 | ..." or "| B 65–70 |"
CITATION = re.compile(r"Note ([AB])|eq\.\s*(\d+(?:\s*(?:/|,|=)\s*(?:eq\.\s*)?\d+)*)")


def _claimed(numbers: str) -> set[int]:
    """ "32, 52" -> {32, 52}; "17–24" -> {17, ..., 24}."""
    claimed = set()
    for part in numbers.split(","):
        first, _, last = part.strip().partition("–")
        claimed.update(range(int(first), int(last or first) + 1))
    return claimed


def _cited(line: str) -> set[tuple[str | None, int]]:
    """The (note, equation) pairs a line of code cites: "Note A eq. 8 / Note B eq. 30" -> {(A, 8), (B, 30)}.

    An equation number belongs to the last note named before it on the line (None if none is).
    """
    cited, note = set(), None
    for match in CITATION.finditer(line):
        if match[1]:
            note = match[1]
        else:
            cited.update((note, int(n)) for n in re.findall(r"\d+", match[2]))
    return cited


def test_doc_examples_run():
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=FLAGS, verbose=False)
    assert result.attempted > 40
    assert result.failed == 0


def test_dense_docstring_examples_run():
    result = doctest.testmod(bp_torch.dense, optionflags=FLAGS, verbose=False)
    assert result.attempted >= 3
    assert result.failed == 0


def _links():
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        for path, first, last in LINK.findall(line):
            yield pytest.param(line, path, int(first), int(last or first), id=f"doc-L{number}-{path}#L{first}")


@pytest.mark.parametrize("row, path, first, last", list(_links()))
def test_code_link_cites_its_equation(row, path, first, last):
    """A link `path#Lnn` (or `#Lnn-Lmm`) sits in an equation's row, and the linked lines cite that equation."""
    match = ROW.match(row)
    assert match, f"a link to a line of code must sit in an equation table row, not in: {row!r}"
    note, claimed = match[1], _claimed(match[2])
    lines = (ROOT / path).read_text().splitlines()
    assert last <= len(lines), f"{path} has {len(lines)} lines; the doc links L{first}-L{last}"
    linked = lines[first - 1 : last]
    cited = set().union(*map(_cited, linked))
    assert any(n in claimed and c in (note, None) for c, n in cited), (
        f"the doc's row {note} {sorted(claimed)} links {path}#L{first}-L{last}, which cites {sorted(cited, key=str)}: "
        f"{linked}"
    )


def test_every_equation_row_links_code_or_says_where():
    """Each equation row has a link to code, or names the file that will hold it."""
    rows = [line for line in DOC.read_text().splitlines() if ROW.match(line)]
    assert len(rows) >= 20
    for row in rows:
        assert LINK.search(row) or "`bp_torch/" in row, row


def test_citation_parser():
    assert _cited("# Note A eq. 8 / Note B eq. 30: Δf") == {("A", 8), ("B", 30)}
    assert _cited("Note A eq. 17 (one channel) and eq. 35 (M in), Note B eq. 51: ΔS") == {
        ("A", 17),
        ("A", 35),
        ("B", 51),
    }
    assert _cited("# Note A eq. 8 = eq. 28: ∂e/∂x") == {("A", 8), ("A", 28)}
    assert _cited("(eq. 45/64)") == {(None, 45), (None, 64)}
    assert _claimed("65–70") == set(range(65, 71)) and _claimed("32, 52") == {32, 52}


def test_figure_is_in_the_docs():
    text = DOC.read_text()
    assert "](conv_matrix.png)" in text and (DOC.parent / "conv_matrix.png").is_file()
    assert "python -m bp_torch.dense --plot docs/conv_matrix.png" in text
