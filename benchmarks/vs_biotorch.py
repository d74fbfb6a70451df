"""bp_torch's backward rules against BioTorch's, in one process, on BioTorch's own LeNetMNIST (32x32 input).

For every rule both libraries have (backprop, fa, dfa, usf, brsf, frsf), one LeNetMNIST is Xavier-initialised as
BioTorch's benchmark initialises it, then copied twice: ``biotorch.module.biomodule.BioModule(copy, mode=R)`` (its
layers take the copy's weights) and ``bp_torch.nn.convert(copy, rule=R)``. Both start from the same weights; each
library draws its own feedback matrices. Two parts::

    python benchmarks/vs_biotorch.py --part time   # SGD step time, interleaved, one thread: ratio ours/theirs
    python benchmarks/vs_biotorch.py --part accuracy --epochs 100 --seeds 0 1 2 --dataset mnist fashion-mnist
    python benchmarks/vs_biotorch.py --part accuracy --epochs 1 --train-subset 20000   # a reduced run: say so
    python benchmarks/vs_biotorch.py --part accuracy --rules dfa --lr dfa=0.001          # another learning rate
    python benchmarks/vs_biotorch.py --part scale   # each layer's gradient norm and B norm, BioTorch's over ours

``time``: one training step (forward, loss, backward, SGD) of each, alternating ours and theirs after a warm-up, on
the same batch of 64; the medians and their ratio (below 1: ours is faster). Two bp_torch variants: every layer
converted (the default: ReLU, max pooling and the loss hand-derived too) and only Conv2d/Linear converted (ReLU,
max pooling and the loss left native, as BioTorch leaves them).

``accuracy``: BioTorch's recipe — SGD, momentum 0.9, weight decay 1e-3, batch 64, the learning rate (per rule,
``LR``) divided by 10 at 50% and 75% of the epochs, cross-entropy — from the same weights and the same batches for
both, then the test error of the last epoch's weights (BioTorch reports the best epoch on a validation split; that
selection is not run here). Images are resized 28→32 (bilinear, antialiased, as BioTorch's ``transforms.Resize``)
and normalised with the dataset's mean/std. MNIST and Fashion-MNIST are read with ``bp_torch.train.data.load_dataset``
(``--data-dir``, default $BP_TORCH_DATA; Fashion-MNIST also from Debian's ``dataset-fashion-mnist``).

Needs ``pip install --no-deps biotorch`` (the ``benchmark`` extra). Writes JSON and a markdown table to --out. (Not
named biotorch.py: Python puts the script's folder first on sys.path, so ``import biotorch`` would import it.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bp_torch import feedback  # noqa: E402
from bp_torch import nn as bnn  # noqa: E402
from bp_torch.train.data import DATASETS, DatasetNotFoundError, load_dataset  # noqa: E402

RULES = ("backprop", "fa", "dfa", "usf", "brsf", "frsf")
BIOTORCH_MODE = {"backprop": "backpropagation"}  # BioTorch's name where it differs
# the initial learning rates of BioTorch's LeNet SGD configs (benchmark_configs/cifar10/le_net/sgd/<rule>.yaml; its
# MNIST configs are not published): a rule whose δ is far from the gradient needs a smaller step
LR = {"backprop": 0.1, "fa": 0.001, "dfa": 0.0001, "usf": 0.1, "brsf": 0.1, "frsf": 0.1}
# BioTorch's published LeNet MNIST top-1 errors (Benchmarks.md; best validation epoch of its own recipe)
PUBLISHED = {
    "mnist": {"backprop": 0.91, "fa": 1.7, "dfa": 1.61, "usf": 0.94, "brsf": 0.91, "frsf": 0.97},
    "fashion-mnist": {"backprop": 9.2, "fa": 13.06, "dfa": 12.81, "usf": 9.69, "brsf": 10.02, "frsf": 9.61},
}


def base_model(seed: int) -> nn.Module:
    """BioTorch's LeNetMNIST, Xavier-uniform weights and zero biases as its benchmark initialises them."""
    from biotorch.models.le_net import LeNetMNIST
    from biotorch.models.utils import apply_xavier_init

    torch.manual_seed(seed)
    return LeNetMNIST().apply(apply_xavier_init)


def theirs(base: nn.Module, rule: str) -> nn.Module:
    from biotorch.module.biomodule import BioModule

    with contextlib.redirect_stdout(io.StringIO()):  # its converter prints a summary
        return BioModule(copy.deepcopy(base), mode=BIOTORCH_MODE.get(rule, rule), output_dim=10)


def ours(base: nn.Module, rule: str, layers_only: bool = False) -> nn.Module:
    model = bnn.convert(copy.deepcopy(base), rule=rule)[0]
    if layers_only:  # ReLU and max pooling native, as BioTorch leaves them
        for module in model.modules():
            if isinstance(module, (bnn.ReLU, bnn.MaxPool2d)):
                module.__class__ = nn.ReLU if isinstance(module, bnn.ReLU) else nn.MaxPool2d
    return model


def share_feedback(model_theirs: nn.Module, model_ours: nn.Module, rule: str) -> None:
    """Give each of our layers BioTorch's own fixed B (fa and dfa: ``weight_backward``, the shape of our buffer), so
    that the two runs differ in nothing but the libraries' code."""
    if rule not in ("fa", "dfa"):
        return
    layers = [[m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))] for model in (model_theirs,
              model_ours)]  # fmt: skip
    for their, our in zip(*layers):
        if hasattr(our, "feedback"):
            our.feedback.copy_(their.weight_backward.detach().reshape(our.feedback.shape))


def step_fn(model: nn.Module, rule: str, biotorch: bool, loss_fn, lr: float):
    """One SGD training step of ``model`` on a batch: BioTorch's DFA takes the targets and loss in its forward."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        out = model(x, y, loss_fn) if biotorch and rule == "dfa" else model(x)
        loss = loss_fn(out, y)
        loss.backward()
        optimizer.step()
        return loss

    return step, optimizer


def images(name: str, train: bool, root: str | None, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset(name, train, root)
    x, y = (x[:limit], y[:limit]) if limit else (x, y)
    info = DATASETS[name]
    x = F.interpolate(x[:, None].float() / 255, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    return (x - info.mean) / info.std, y


def time_part(args) -> list[dict]:
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
    rows = []
    for rule in args.rules:
        base = base_model(0)
        pairs = {
            "theirs": step_fn(theirs(base, rule), rule, True, F.cross_entropy, LR[rule])[0],
            "ours": step_fn(ours(base, rule), rule, False, bnn.CrossEntropyLoss(), LR[rule])[0],
            "ours_layers": step_fn(ours(base, rule, layers_only=True), rule, False, F.cross_entropy, LR[rule])[0],
        }
        times = {k: [] for k in pairs}
        for i in range(args.warmup + args.reps):
            order = list(pairs) if i % 2 == 0 else list(reversed(pairs))  # alternate who goes first
            for name in order:
                start = time.perf_counter()
                pairs[name](x, y)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        medians = {k: statistics.median(v) for k, v in times.items()}
        row = {"rule": rule, **{f"{k}_ms": 1e3 * v for k, v in medians.items()}}
        row["ratio"] = medians["ours"] / medians["theirs"]
        row["ratio_layers"] = medians["ours_layers"] / medians["theirs"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def scale_part(args) -> list[dict]:
    """Per rule, from the same weights on one batch of 64: each layer's weight-gradient norm, BioTorch's over ours
    (1.00: the same step size), and the norm of each layer's B, BioTorch's over ours."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
    rows = []
    for rule in args.rules:
        base = base_model(0)
        models = {"theirs": theirs(base, rule), "ours": ours(base, rule)}
        grads = {}
        for side, model in models.items():
            out = model(x, y, F.cross_entropy) if side == "theirs" and rule == "dfa" else model(x)
            weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            grads[side] = torch.autograd.grad(F.cross_entropy(out, y), weights)
        B = {side: [b for n, b in m.named_buffers() if n.endswith("feedback")] for side, m in models.items()}
        B["theirs"] = [p for n, p in models["theirs"].named_parameters() if n.endswith("weight_backward")]
        row = {"rule": rule, "grad_norm_ratio": [(a.norm() / b.norm()).item() for a, b in zip(*grads.values())]}
        if B["ours"]:
            row["b_norm_ratio"] = [(a.norm() / b.norm()).item() for a, b in zip(B["theirs"], B["ours"])]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def train_and_test(model, rule, biotorch, data, args, seed) -> float:
    (x, y), (x_test, y_test) = data
    loss_fn = F.cross_entropy if biotorch else bnn.CrossEntropyLoss()
    step, optimizer = step_fn(model, rule, biotorch, loss_fn, args.lr.get(rule, LR[rule]))
    milestones = [math.ceil(args.epochs * 0.5), math.ceil(args.epochs * 0.75)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    shuffle = torch.Generator().manual_seed(seed)  # the same batches for both libraries
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(x), generator=shuffle)
        for i in range(0, len(x) - args.batch_size + 1, args.batch_size):  # drop_last, as BioTorch's loader
            batch = order[i : i + args.batch_size]
            loss = step(x[batch], y[batch])
            if not torch.isfinite(loss):
                return float("nan")
        schedule.step()
    model.eval()
    with torch.no_grad():
        wrong = sum((model(x_test[i : i + 1000]).argmax(1) != y_test[i : i + 1000]).sum().item()
                    for i in range(0, len(x_test), 1000))  # fmt: skip
    return 100.0 * wrong / len(x_test)


def accuracy_part(args) -> list[dict]:
    rows = []
    data = {
        d: (images(d, True, args.data_dir, args.train_subset), images(d, False, args.data_dir)) for d in args.dataset
    }
    for seed in args.seeds:  # seed outermost: a run cut short still covers every rule and dataset
        for dataset, (train, test) in data.items():
            for rule in args.rules:
                base = base_model(seed)
                torch.manual_seed(seed + 1000)  # the feedback matrices' draws, then brsf's, from here
                model_theirs = theirs(base, rule)
                model_ours = ours(base, rule)
                if args.same_b:
                    share_feedback(model_theirs, model_ours, rule)
                start = time.perf_counter()
                error_theirs = train_and_test(model_theirs, rule, True, (train, test), args, seed)
                middle = time.perf_counter()
                error_ours = train_and_test(model_ours, rule, False, (train, test), args, seed)
                row = dict(dataset=dataset, rule=rule, seed=seed, theirs=error_theirs, ours=error_ours,
                           seconds_theirs=middle - start, seconds_ours=time.perf_counter() - middle)  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def markdown(args, timing: list[dict], accuracy: list[dict], scale: list[dict], command: str) -> str:
    lines = [f"`{command}`", "", f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} thread(s)", ""]  # fmt: skip
    if timing:
        lines += ["| rule | BioTorch ms | ours ms | ours/BioTorch | ours, Conv/Linear only ms | ratio |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in timing:
            lines.append(f"| {r['rule']} | {r['theirs_ms']:.2f} | {r['ours_ms']:.2f} | {r['ratio']:.2f} | "
                         f"{r['ours_layers_ms']:.2f} | {r['ratio_layers']:.2f} |")  # fmt: skip
        lines.append("")
    if scale:
        lines += ["| rule | weight-gradient norm, BioTorch/ours (conv1, conv2, conv3, fc1, fc2) | B norm, same |",
                  "|---|---|---|"]  # fmt: skip
        for r in scale:
            b = ", ".join(f"{v:.2f}" for v in r.get("b_norm_ratio", [])) or "no B"
            lines.append(f"| {r['rule']} | {', '.join(f'{v:.2f}' for v in r['grad_norm_ratio'])} | {b} |")
        lines.append("")
    if accuracy:
        lines += ["| dataset | rule | BioTorch test error % (seeds) | mean | ours (seeds) | mean | published |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for dataset in args.dataset:
            for rule in args.rules:
                got = [r for r in accuracy if r["dataset"] == dataset and r["rule"] == rule]
                if not got:
                    continue
                cells = []
                for side in ("theirs", "ours"):
                    values = [r[side] for r in got]
                    cells += [" / ".join(f"{v:.2f}" for v in values), f"{statistics.fmean(values):.2f}"]
                lines.append(f"| {dataset} | {rule} | {' | '.join(cells)} | {PUBLISHED[dataset][rule]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("time", "accuracy", "both", "scale"), default="time")
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--dataset", nargs="+", choices=sorted(DATASETS), default=["mnist", "fashion-mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    parser.add_argument("--lr", nargs="+", default=[], metavar="RULE=LR",
                        help="initial learning rates, e.g. dfa=0.001 (default: BioTorch's per rule, LR)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-subset", type=int, default=0, help="train on the first N images only (0: all)")
    parser.add_argument("--reps", type=int, default=30, help="timed steps per library and rule (default 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--b-init", choices=("ours", "xavier"), default="ours",
                        help="how bp_torch draws fa/frsf/brsf/dfa's B: its own U(±1/√fan_in) (default) or BioTorch's "
                        "Xavier-uniform, to tell the initialisation's part in a difference")  # fmt: skip
    parser.add_argument("--same-b", action="store_true",
                        help="fa, dfa: our layers take BioTorch's own B (weight_backward), not our draw")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default $BP_TORCH_DATA)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the results")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("biotorch") is None:
        print("vs_biotorch.py: error: BioTorch is not installed: pip install --no-deps biotorch", file=sys.stderr)
        return 2
    args.lr = {rule: float(value) for rule, _, value in (item.partition("=") for item in args.lr)}
    torch.set_num_threads(args.threads)
    if args.b_init == "xavier":  # every draw of a B (fa, frsf, brsf's per-step one, dfa) goes through _draw_like
        feedback._draw_like = lambda weight: nn.init.xavier_uniform_(torch.empty_like(weight))
    command = "python benchmarks/vs_biotorch.py " + " ".join(argv if argv is not None else sys.argv[1:])
    name = f"biotorch-{args.part}" + ("-xavier" if args.b_init == "xavier" else "") + ("-same-b" if args.same_b else "")
    timing = time_part(args) if args.part in ("time", "both") else []
    try:
        accuracy = accuracy_part(args) if args.part in ("accuracy", "both") else []
    except DatasetNotFoundError as e:  # its message says where it looked and what to pass
        print(f"vs_biotorch.py: error: {e}", file=sys.stderr)
        return 2
    scale = scale_part(args) if args.part == "scale" else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(command=command, timing=timing, accuracy=accuracy, scale=scale)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown(args, timing, accuracy, scale, command))
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
