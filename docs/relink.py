"""Repair the code links of docs/derivation.md after the code moves: ``python docs/relink.py [--check]``.

A link ``[conv.py#L51](../bp_torch/autograd/conv.py#L51)`` in an equation row must land on the line of code that
computes the row's equation: every linked line holds code (not a docstring, a comment-only or a blank line), and the
trailing ``#`` comment of one of them cites the equation ("Note B eq. 51"). A stale link moves to such a line: the
one nearest its old position shifted by how far the file's stale links moved (their median). A span keeps its length
while its lines stay code in the cited line's block. ``--check`` lists the stale links and exits 1, writing nothing.
"""

from __future__ import annotations

import ast
import io
import re
import statistics
import sys
import tokenize
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "derivation.md"

LINK = re.compile(r"\[(?P<label>[^\]]*)\]\(\.\./(?P<path>bp_torch/[\w/]+\.py)#L(?P<first>\d+)(?:-L(?P<last>\d+))?\)")
_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
# a table row "| B 32, 52 | ..." or "| B 65–70 |"; a letter other than A and B is a label of our own ("| J 3 |")
ROW = re.compile(r"^\|\s*([A-Z]) (\d+(?:\s*[,–]\s*\d+)*)\s*\|")
# "Note A" sets the note of the numbers after it; a label of our own carries its letter: "eq. J3"
CITATION = re.compile(r"Note ([AB])|eq\.\s*([A-Z](?=\d))?(\d+(?:\s*(?:/|,|=)\s*(?:eq\.\s*)?\d+)*)")


def _claimed(numbers: str) -> set[int]:
    """ "32, 52" -> {32, 52}; "17–24" -> {17, ..., 24}."""
    claimed = set()
    for part in numbers.split(","):
        first, _, last = part.strip().partition("–")
        claimed.update(range(int(first), int(last or first) + 1))
    return claimed


def _cited(line: str) -> set[tuple[str | None, int]]:
    """The (note, equation) pairs a line of code cites: "Note A eq. 8 / Note B eq. 30" -> {(A, 8), (B, 30)}.

    An equation number belongs to the last note named before it on the line (None if none is); a label of our own
    to its letter: "eq. J3" -> {(J, 3)}.
    """
    cited, note = set(), None
    for match in CITATION.finditer(line):
        if match[1]:
            note = match[1]
        else:
            cited.update((match[2] or note, int(n)) for n in re.findall(r"\d+", match[3]))
    return cited


def cites(row: re.Match, lines: list[str]) -> bool:
    """Whether any of ``lines`` (or comments) cites the equation of ``row`` (a ROW match)."""
    note, claimed = row[1], _claimed(row[2])
    return any(n in claimed and c in (note, None) for line in lines for c, n in _cited(line))


def code_comments(lines: list[str]) -> dict[int, str]:
    """Each line (1-based) that holds code, with its trailing comment ("" if none). Lines of docstrings (a string
    standing alone as a statement), comment-only lines and blank lines are not code and are left out."""
    source = "\n".join(lines) + "\n"
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, tokenize.TokenError):
        return {}
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docstrings.update(range(node.lineno, node.end_lineno + 1))
    code, comments = set(), {}
    for token in tokens:
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
        elif token.type not in _NOT_CODE:
            code.update(range(token.start[0], token.end[0] + 1))
    return {n: comments.get(n, "") for n in sorted(code - docstrings)}


def computes(row: re.Match, lines: list[str], first: int, last: int) -> bool:
    """Whether lines ``first``..``last`` (1-based) of a file are all code and one's comment cites ``row``'s equation."""
    code = code_comments(lines)
    span = range(first, last + 1)
    return all(n in code for n in span) and cites(row, [code[n] for n in span])


def _span(lines: list[str], first: int, length: int) -> tuple[int, int]:
    """``length`` lines from ``first`` (1-based) if they are code in its block, else ``first`` alone."""
    code = code_comments(lines)
    block, indent = lines[first - 1 : first - 1 + length], len(lines[first - 1]) - len(lines[first - 1].lstrip())
    whole = len(block) == length and all(
        first + i in code and len(s) - len(s.lstrip()) >= indent for i, s in enumerate(block)
    )
    return (first, first + length - 1) if whole else (first, first)


def repair(text: str, read: Callable[[str], list[str]]) -> tuple[str, list[str]]:
    """``text`` with its stale links moved, and one message per stale link; ``read(path)`` gives a file's lines."""
    doc, stale = text.splitlines(keepends=True), []
    for i, row in enumerate(doc):
        for link in LINK.finditer(row):
            first, last = int(link["first"]), int(link["last"] or link["first"])
            if (eq := ROW.match(row)) and not computes(eq, read(link["path"]), first, last):
                lines = read(link["path"])
                candidates = [n for n, comment in code_comments(lines).items() if cites(eq, [comment])]
                stale.append((i, link, eq, lines, candidates, first, last))
    moved: dict[str, list[int]] = {}  # each file's drift: how far each stale link's best line is from it
    for _, link, _, _, candidates, first, _ in stale:
        if candidates:
            moved.setdefault(link["path"], []).append(min(candidates, key=lambda n: (abs(n - first), n)) - first)
    new, messages, taken = {}, [], {}
    for i, link, eq, lines, candidates, first, last in stale:
        where = f"{DOC.name}:{i + 1} {eq[1]} {eq[2]}: {link['path']}#L{first}" + (f"-L{last}" if last > first else "")
        row_taken = taken.setdefault(i, {(m["path"], int(m["first"])) for m in LINK.finditer(doc[i])})
        target = first + statistics.median_low(moved.get(link["path"], [0]))
        free = [n for n in candidates if (link["path"], n) not in row_taken] or candidates
        if not free:
            messages.append(f"{where}: no line of code in {link['path']} cites it")
            continue
        best = min(free, key=lambda n: (abs(n - target), n))
        row_taken.add((link["path"], best))
        a, b = _span(lines, best, last - first + 1)
        suffix = f"#L{a}" + (f"-L{b}" if b > a else "")
        new[i, link.start()] = (link.end(), f"[{re.sub(r'#L.*$', suffix, link['label'])}](../{link['path']}{suffix})")
        messages.append(f"{where} -> {suffix}")
    for (i, start), (end, replacement) in sorted(new.items(), reverse=True):
        doc[i] = doc[i][:start] + replacement + doc[i][end:]
    return "".join(doc), messages


def main(argv: list[str]) -> int:
    check = "--check" in argv
    text, messages = repair(DOC.read_text(), lambda path: (ROOT / path).read_text().splitlines())
    print("\n".join(f"{'stale' if check else 'relinked'} {m}" for m in messages) or "every link cites its equation")
    if not check and text != DOC.read_text():
        DOC.write_text(text)
    return 1 if (check and messages) or any(m.endswith("cites it") for m in messages) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
