"""Repair the code links of docs/derivation.md after the code moves: ``python docs/relink.py [--check]``.

A link ``[autograd.py#L51](../bp_torch/autograd.py#L51)`` in an equation row must land on lines that cite the row's
equation ("Note B eq. 51"). A stale link moves to a line that does: a line of code whose trailing ``#`` comment cites
the equation before any other (a docstring, a comment line); among those, the one nearest its old position shifted by
how far the file's stale links moved (their median). A span keeps its length while its lines stay in the cited line's
block. ``--check`` lists the stale links and exits 1, writing nothing.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "derivation.md"

LINK = re.compile(r"\[(?P<label>[^\]]*)\]\(\.\./(?P<path>bp_torch/[\w/]+\.py)#L(?P<first>\d+)(?:-L(?P<last>\d+))?\)")
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


def cites(row: re.Match, lines: list[str]) -> bool:
    """Whether any of ``lines`` cites the equation of ``row`` (a ROW match)."""
    note, claimed = row[1], _claimed(row[2])
    return any(n in claimed and c in (note, None) for line in lines for c, n in _cited(line))


def _span(lines: list[str], first: int, length: int) -> tuple[int, int]:
    """``length`` lines from ``first`` (1-based) if they stay in its block, else ``first`` alone."""
    block, indent = lines[first - 1 : first - 1 + length], len(lines[first - 1]) - len(lines[first - 1].lstrip())
    whole = len(block) == length and all(s.strip() and len(s) - len(s.lstrip()) >= indent for s in block)
    return (first, first + length - 1) if whole else (first, first)


def _rank(row: re.Match, line: str) -> int:
    """0 for code whose trailing ``#`` comment cites the equation (the line that implements it), else 1."""
    code, _, comment = line.partition("#")
    return 0 if code.strip() and cites(row, [comment]) else 1


def repair(text: str, read: Callable[[str], list[str]]) -> tuple[str, list[str]]:
    """``text`` with its stale links moved, and one message per stale link; ``read(path)`` gives a file's lines."""
    doc, stale = text.splitlines(keepends=True), []
    for i, row in enumerate(doc):
        for link in LINK.finditer(row):
            first, last = int(link["first"]), int(link["last"] or link["first"])
            if (eq := ROW.match(row)) and not cites(eq, read(link["path"])[first - 1 : last]):
                lines = read(link["path"])
                rank = {n: _rank(eq, s) for n, s in enumerate(lines, 1) if cites(eq, [s])}
                stale.append((i, link, eq, lines, rank, first, last))
    moved: dict[str, list[int]] = {}  # each file's drift: how far each stale link's best line is from it
    for _, link, _, _, rank, first, _ in stale:
        if rank:
            moved.setdefault(link["path"], []).append(min(rank, key=lambda n: (rank[n], abs(n - first), n)) - first)
    new, messages, taken = {}, [], {}
    for i, link, eq, lines, rank, first, last in stale:
        where = f"{DOC.name}:{i + 1} {eq[1]} {eq[2]}: {link['path']}#L{first}" + (f"-L{last}" if last > first else "")
        row_taken = taken.setdefault(i, {(m["path"], int(m["first"])) for m in LINK.finditer(doc[i])})
        target = first + statistics.median_low(moved.get(link["path"], [0]))
        free = [n for n in rank if (link["path"], n) not in row_taken] or list(rank)
        if not free:
            messages.append(f"{where}: no line of {link['path']} cites it")
            continue
        best = min(free, key=lambda n: (rank[n], abs(n - target), n))
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
