"""docs/derivation.md cannot drift from the code: its examples run, and each code link names its equation."""

import doctest
import importlib.util
import runpy
from pathlib import Path

import pytest

import bp_torch.dense

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "derivation.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# the link parsing lives in docs/relink.py, the script that repairs the links this file checks
_spec = importlib.util.spec_from_file_location("relink", ROOT / "docs" / "relink.py")
relink = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relink)
LINK, ROW, _claimed, _cited = relink.LINK, relink.ROW, relink._claimed, relink._cited


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
        for link in LINK.finditer(line):
            path, first, last = link["path"], int(link["first"]), int(link["last"] or link["first"])
            yield pytest.param(line, path, first, last, id=f"doc-L{number}-{path}#L{first}")


@pytest.mark.parametrize("row, path, first, last", list(_links()))
def test_code_link_lands_on_the_code_that_computes_its_equation(row, path, first, last):
    """A link `path#Lnn` (or `#Lnn-Lmm`) sits in an equation's row and lands on lines of code — never a docstring,
    a comment-only or a blank line — one of whose trailing comments cites that equation."""
    match = ROW.match(row)
    assert match, f"a link to a line of code must sit in an equation table row, not in: {row!r}"
    lines = (ROOT / path).read_text().splitlines()
    assert last <= len(lines), f"{path} has {len(lines)} lines; the doc links L{first}-L{last}"
    assert relink.computes(match, lines, first, last), (
        f"the doc's row {match[1]} {match[2]} links {path}#L{first}-L{last}: {lines[first - 1 : last]}, which is not "
        f"code whose comment cites it; run `python docs/relink.py` to repair the links"
    )


def test_links_into_docstrings_and_comment_lines_are_rejected():
    code = ['"""σ backward (Note B eq. 37)."""', "# Note B eq. 37", "", "y = x * (1 - x)  # Note B eq. 37", "z = y"]
    row = ROW.match("| B 37 | σ' |")
    assert [relink.computes(row, code, n, n) for n in range(1, 6)] == [False, False, False, True, False]
    assert relink.computes(row, code, 4, 5) and not relink.computes(row, code, 3, 4)


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
    assert _cited("# Note B eq. 13/17, eq. D7: ∂L/∂ŷ") == {("B", 13), ("B", 17), ("D", 7)}
    assert _cited("# eq. D7/D8 then eq. 37") == {("D", 7), ("D", 8), (None, 37)}
    assert _cited("# eq. M2, channels last") == {("M", 2)} and _cited("Note B eq. 32, eq. M5") == {("B", 32), ("M", 5)}
    assert ROW.match("| M 10 | ∂e/∂x |").groups() == ("M", "10")
    assert _cited("# Note B eq. 40 ... eq. J3: + (x, δ̇)") == {("B", 40), ("J", 3)}
    assert ROW.match("| J 1 | ẏ |").groups() == ("J", "1")
    assert _claimed("65–70") == set(range(65, 71)) and _claimed("32, 52") == {32, 52}


def test_relink_moves_a_stale_link_to_the_commented_code():
    """A stale link moves to the code line whose comment cites the equation, not the nearer docstring or comment line;
    the span keeps its length."""
    code = ['"""σ backward (Note B eq. 37)."""', "# Note B eq. 37", "", "y = x * (1 - x)  # Note B eq. 37", "z = y"]
    text, messages = relink.repair("| B 37 | σ' | [f.py#L2-L3](../bp_torch/f.py#L2-L3) |\n", lambda path: code)
    assert text == "| B 37 | σ' | [f.py#L4-L5](../bp_torch/f.py#L4-L5) |\n" and len(messages) == 1
    assert relink.repair(text, lambda path: code) == (text, [])


def test_figure_is_in_the_docs():
    text = DOC.read_text()
    assert "](conv_matrix.png)" in text and (DOC.parent / "conv_matrix.png").is_file()
    assert "python docs/plot_conv_matrix.py docs/conv_matrix.png" in text


def test_plot_command(tmp_path, capsys):
    """`python docs/plot_conv_matrix.py PNG` draws the figure kept in docs/ (a PNG file)."""
    path = tmp_path / "conv_matrix.png"
    runpy.run_path(str(ROOT / "docs" / "plot_conv_matrix.py"))["main"]([str(path)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(path) in capsys.readouterr().out
