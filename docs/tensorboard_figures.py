"""Pictures of what TensorBoard shows for a run, for docs/training.md: ``python docs/tensorboard_figures.py RUN OUT``.

RUN is a run's folder (``runs/NAME``, with its TensorBoard event file); OUT the folder for the PNGs. The images are
the run's own, as it logged them at its last epoch (error maps, filters, confusion matrix, misclassified digits);
the curves are drawn from its scalars (the gradient check, test accuracy) with matplotlib. The pictures in
docs/training/ come from ``python train.py --epochs 2 --run-name docs`` and
``python docs/tensorboard_figures.py runs/docs docs/training``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

IMAGES = {  # TensorBoard tag -> file name
    "error_maps/C1": "error_maps_C1.png",
    "error_maps/S2": "error_maps_S2.png",
    "filters/C1": "filters_C1.png",
    "test/confusion_matrix": "confusion_matrix.png",
    "test/misclassified": "misclassified.png",
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    run, out = Path(argv[0]), Path(argv[1])
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    out.mkdir(parents=True, exist_ok=True)
    for tag, name in IMAGES.items():
        (out / name).write_bytes(events.Images(tag)[-1].encoded_image_string)
        print(out / name)
    scalars = events.Tags()["scalars"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    for tag in sorted(t for t in scalars if t.startswith("gradcheck/")):
        points = events.Scalars(tag)
        left.semilogy([p.step for p in points], [max(p.value, 1e-12) for p in points], ".-", label=tag[10:])
    left.set(title="gradcheck/*: hand-derived vs native, per parameter", xlabel="step", ylabel="relative difference")
    left.legend(fontsize=7)
    for tag, label in (("train/accuracy", "train"), ("test/accuracy", "test")):
        points = events.Scalars(tag)
        right.plot([p.step for p in points], [p.value for p in points], ".-", label=label)
    right.set(title="accuracy", xlabel="step")
    right.legend()
    fig.savefig(out / "scalars.png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    print(out / "scalars.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
