"""Draw the alignment of each backward rule with exact backprop over training, from the runs' TensorBoard logs.

    python train.py --rule fa --seed 0 --logdir runs/rules --run-name rule-fa-seed-0      # and usf, brsf, frsf
    python docs/alignment_figure.py runs/rules --out docs/feedback/alignment.png

One panel per layer (conv1, conv2, fc): the angle between the δ each rule sends to the layer's input and exact
backprop's, per rule, the mean over the seeds found (``rule-<rule>-seed-<n>`` folders; TensorBoard scalar
``alignment/<layer>/delta_angle``, logged every ``--grad-check-interval`` steps). Needs the train extra.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

RULES = ("fa", "usf", "brsf", "frsf")
LAYERS = ("conv1", "conv2", "fc")


def curves(logdir: Path) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """(rule, layer) -> steps and the seeds' mean δ angle at each step."""
    runs: dict[tuple[str, str], list[dict[int, float]]] = defaultdict(list)
    for run in sorted(logdir.glob("rule-*-seed-*")):
        rule = run.name.split("-")[1]
        if rule not in RULES:
            continue
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        for layer in LAYERS:
            tag = f"alignment/{layer}/delta_angle"
            if tag in events.Tags()["scalars"]:
                runs[rule, layer].append({e.step: e.value for e in events.Scalars(tag)})
    out = {}
    for key, seeds in runs.items():
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        out[key] = steps, [sum(s[step] for s in seeds) / len(seeds) for step in steps]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, help="the folder holding the rule-<rule>-seed-<n> runs")
    parser.add_argument("--out", type=Path, default=Path("docs/feedback/alignment.png"), help="the PNG to write")
    args = parser.parse_args(argv)
    data = curves(args.logdir)
    if not data:
        parser.error(f"no rule-<rule>-seed-<n> runs with alignment scalars under {args.logdir}")
    fig, axes = plt.subplots(1, len(LAYERS), figsize=(12, 3.6), sharey=True)
    for ax, layer in zip(axes, LAYERS):
        for rule in RULES:
            if (rule, layer) in data:
                steps, angles = data[rule, layer]
                ax.plot(steps, angles, label=rule)
        ax.set_title(f"δ at {layer}'s input")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("angle to backprop's δ (degrees)")
    axes[0].legend()
    fig.suptitle("How far each rule's δ is from exact backprop's (LeNet, MNIST, default recipe; mean over seeds)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
