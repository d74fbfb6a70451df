"""Which formulation of each derived gradient runs: ``"fast"``, ``"literal"`` or ``"autotune"``.

Every gradient bp_torch computes is one of the notes' equations; many can be computed in several equivalent ways.

- ``"fast"`` (the default): per shape, the formulation a fixed cost model picks among equivalent forms — e.g. Note A
  eq. 14's scatter as a transposed convolution instead of eq. 17's zero-inserted full correlation
  (``bp_torch._conv`` has the table of what runs). Deterministic: the same shapes always run the same arithmetic,
  so a resumed training run repeats an uninterrupted one bit for bit.
- ``"literal"``: every gradient exactly as the notes write it — eq. 17 with zeros inserted for the stride and the
  full padding, eq. 40 as one correlation of x with δ, eq. 32/52 as upsampling, eq. 37 as δ·σ·(1−σ). The reference
  for teaching; slower (benchmarks/README.md says by how much).
- ``"autotune"``: as fast, but each convolution gradient times every formulation ``bp_torch._conv`` has for it the
  first time it meets a shape (on the device at hand, as ``torch.backends.cudnn.benchmark`` does) and runs the
  fastest from then on. Opt-in: a choice made by timing can differ from run to run, and with it the float rounding.

The mode in force when a backward runs is the one it uses::

    >>> import bp_torch
    >>> with bp_torch.formulas("literal"):
    ...     bp_torch.get_formulas()
    'literal'
    >>> bp_torch.get_formulas()
    'fast'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["MODES", "formulas", "get_formulas", "set_formulas", "is_literal", "is_autotune"]

MODES = ("fast", "literal", "autotune")
_mode = "fast"


def get_formulas() -> str:
    """The current mode: ``"fast"``, ``"literal"`` or ``"autotune"``."""
    return _mode


def set_formulas(mode: str) -> None:
    """Make ``mode`` (``"fast"``, ``"literal"`` or ``"autotune"``) the mode of every backward from now on."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"formulas must be one of {', '.join(map(repr, MODES))}, but got {mode!r}")
    _mode = mode


def is_literal() -> bool:
    return _mode == "literal"


def is_autotune() -> bool:
    return _mode == "autotune"


@contextmanager
def formulas(mode: str) -> Iterator[None]:
    """Run the enclosed backward passes with the ``mode`` formulations; the previous mode is restored after."""
    previous = get_formulas()
    set_formulas(mode)
    try:
        yield
    finally:
        set_formulas(previous)
