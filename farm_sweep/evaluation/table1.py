"""Reproduce the paper's Table 1: MADE and FARM+MADE inpainting on binarized MNIST (paper 3.4).

Rows (as in the paper): MADE k=1; FARM+MADE k=2,4,8 trained with the MADE loss (`mc`, eq 1); with the
FARM loss (`ensemble`, eq 3); with the FARM loss plus the evidence-weighted KL term (eq 5) at weight
λ = --kl-weight. The paper does not state λ for MADE; we default to λ = 1, the weight at which the
KL term and the main loss are both nats per pixel and so on the same scale (DESIGN notes the
paper's code fixed λ = 100: pass --kl-weight 100 to compare). Orderings: the raster family (k=2:
raster + reversed; k=4: + the two transposed; k=8: all eight).

Every model is evaluated with 100 occlusions x 100 consecutive images (a whole 10,000-image split, the
same seeded occlusions for every model) drawn and averaged by --protocol (default `paper`, the paper's
code: farm_sweep.occlusions) for the three cases, on the test
split (headline) and the valid split (what the paper's code used), with the FARM rows filling with
--fill (default evidence_weighted) and MADE k=1 with its only ordering. The training budget (hidden
sizes, epochs, examples) is an argument; the paper's models had two hidden layers of 1000 units.
`--recipe` adds training settings to every row (the converging recipe of docs/results.md: direct
connections, dropout, a learning-rate schedule, early stopping); `--losses` picks the row groups. Training
checkpoints every epoch under --work-dir (one folder per row, k<k>_<loss>_<divergence>) and resumes there if
interrupted; a row whose folder holds a finished run is only evaluated. `--dataset` runs the same
table on other binary images: a dataset name, or your own data as a JSON dataset spec (docs/data.md; a
relative path starts at the working directory); the paper's values are then left out.

    python -m farm_sweep.table1 --out table1.md                       # the reproduction (GPU advised)
    python -m farm_sweep.table1 --out /tmp/t.md --hidden-sizes 32 --epochs 1 \\
        --max-train-examples 500 --num-occlusions 2 --images-per-occlusion 5 --ks 2   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from farm_sweep.data import DATASETS, DataError, DatasetSpec, dataset_label, load_dataset
from farm_sweep.made.inpaint import evaluate_inpainting, inpainting_figure
from farm_sweep.made.likelihood import nll_image
from farm_sweep.made.network import FarmMADE
from farm_sweep.occlusions import CASES, FILLS, PROTOCOLS
from farm_sweep.training import checkpoint, preflight
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.training.loop import build_model, resolve_device, train
from farm_sweep.untrusted import InputError, parse_json

# Table 1 of the paper: (L2, NLL) per case; its NLL is our nll_chain.
PAPER = {
    "MADE (k = 1) baseline": ((0.0920, 0.2611), (0.1493, 0.3461), (0.0832, 0.2373)),
    "FARM + MADE (k = 2)": ((0.0657, 0.1609), (0.1339, 0.2849), (0.0835, 0.2139)),
    "FARM + MADE (k = 4)": ((0.0642, 0.1433), (0.1325, 0.2617), (0.0805, 0.1843)),
    "FARM + MADE (k = 8)": ((0.0641, 0.1390), (0.1340, 0.2589), (0.0810, 0.1798)),
    "FARM + MADE (k = 2) + FARM loss": ((0.0684, 0.1591), (0.1397, 0.2958), (0.0865, 0.2313)),
    "FARM + MADE (k = 4) + FARM loss": ((0.0702, 0.1570), (0.1466, 0.3024), (0.0886, 0.2153)),
    "FARM + MADE (k = 8) + FARM loss": ((0.0733, 0.1854), (0.1578, 0.3506), (0.0963, 0.2515)),
    "FARM + MADE (k = 2) + FARM loss + KL": ((0.0682, 0.1572), (0.1402, 0.2930), (0.0865, 0.2281)),
    "FARM + MADE (k = 4) + FARM loss + KL": ((0.0687, 0.1597), (0.1456, 0.2991), (0.0898, 0.2107)),
    "FARM + MADE (k = 8) + FARM loss + KL": ((0.0734, 0.1761), (0.1567, 0.3394), (0.0966, 0.2482)),
}
SPLITS = (("test", "headline"), ("valid", "the split the paper's code used"))
PAPER_DATASET = "binarized_mnist"


@dataclass(frozen=True)
class Row:
    label: str
    k: int
    loss: str
    divergence: str


# The row groups after MADE k = 1: (--losses name, label suffix, loss, divergence)
GROUPS = (("mc", "", "mc", "none"), ("ensemble", " + FARM loss", "ensemble", "none"),
          ("ensemble+kl", " + FARM loss + KL", "ensemble", "kl"))
ROW_FIELDS = {"num_orderings", "ordering_family", "loss", "divergence", "divergence_weight"}  # set per row


def table_rows(ks: list[int], losses: Sequence[str] = tuple(g[0] for g in GROUPS)) -> list[Row]:
    rows = [Row("MADE (k = 1) baseline", 1, "mc", "none")]
    for name, suffix, loss, divergence in GROUPS:
        if name in losses:
            rows += [Row(f"FARM + MADE (k = {k}){suffix}", k, loss, divergence) for k in ks]
    return rows


def row_config(row: Row, args: argparse.Namespace) -> TrainConfig:
    settings = {"dataset": args.dataset, "data_dir": args.data_dir, "max_train_examples": args.max_train_examples,
                "hidden_sizes": tuple(args.hidden_sizes), "lr": args.lr, "epochs": args.epochs, "seed": args.seed,
                "device": args.device, **args.recipe, "num_orderings": row.k, "ordering_family": "raster",
                "loss": row.loss, "divergence": row.divergence,
                "divergence_weight": args.kl_weight if row.divergence == "kl" else 0.0}
    return TrainConfig.from_dict(settings)


def train_row(row: Row, args: argparse.Namespace) -> FarmMADE:
    """Train (or resume) one row's model and return it loaded from its last checkpoint."""
    config = row_config(row, args)
    folder = args.work_dir / f"k{row.k}_{row.loss}_{row.divergence}"
    print(f"== {row.label}: training into {folder}")
    for _ in train(config, folder):
        pass
    model = build_model(config, *preflight.check(config))
    checkpoint.load(checkpoint.latest_valid(folder), model)
    return model.to(resolve_device(config.device)).eval()


def evaluate_row(model: FarmMADE, row: Row, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """{split: {"<case>/<metric>": value, "nll_image": value}} for the protocol on both splits."""
    fill = "single" if row.k == 1 else args.fill
    device = next(model.parameters()).device
    results = {}
    for split, _ in SPLITS:
        data = load_dataset(args.dataset, split, args.data_dir)
        images = data.images.to(device)
        found = {"nll_image": nll_image(model, images)["nll_image"]}
        for case in CASES:
            metrics = evaluate_inpainting(model, images, data.height, data.width, case, fill, args.num_occlusions,
                                          args.images_per_occlusion, args.seed, args.protocol)
            found |= {f"{case}/{name}": value for name, value in metrics.items()}
            print(f"   {split:5s} {case:7s} l2 {metrics['l2']:.4f}  nll_chain {metrics['nll_chain']:.4f}  "
                  f"nll_exact {metrics['nll_exact']:.4f}")
        results[split] = found
    return results


def markdown(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    paper = args.dataset == PAPER_DATASET
    title = "Table 1 reproduction: inpainting on binarized MNIST" if paper else \
        f"Table 1 on your own data: inpainting on {dataset_label(args.dataset)}"
    recipe = f" (and {json.dumps(args.recipe)})" if args.recipe else ""
    lines = [f"# {title}\n",
             f"Budget: hidden sizes {args.hidden_sizes}, {args.epochs} epochs{recipe}, "
             f"{args.max_train_examples or 'all'} training images, lr {args.lr}, seed {args.seed}; "
             f"KL weight λ = {args.kl_weight}; FARM fill `{args.fill}`; occlusion protocol `{args.protocol}`, "
             f"{args.num_occlusions} occlusions x {args.images_per_occlusion} images per case. Cells: ours"
             f"{' (paper)' if paper else ''}. NLL in nats per occluded pixel; `chain` = the paper's NLL (earlier "
             f"hole pixels sampled), `exact` = teacher-forced. nll_image = whole-image NLL of the k-ordering "
             "mixture, nats.\n"]
    header = "| model | " + " | ".join(f"{case} L2 | {case} NLL chain | {case} NLL exact" for case in CASES)
    for split, role in SPLITS:
        lines += [f"\n## {split} split ({role})\n", header + " | nll_image |",
                  "|---" * (2 + 3 * len(CASES)) + "|"]
        for label, by_split in results.items():
            found = by_split[split]
            cells = []
            for case, (paper_l2, paper_nll) in zip(CASES, PAPER[label]):
                cells += [f"{found[f'{case}/l2']:.4f}" + (f" ({paper_l2:.4f})" if paper else ""),
                          f"{found[f'{case}/nll_chain']:.4f}" + (f" ({paper_nll:.4f})" if paper else ""),
                          f"{found[f'{case}/nll_exact']:.4f}"]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {found['nll_image']:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Reproduce the FARM paper's Table 1 (MADE inpainting). Or, from a "
                                     "study's confirmation stage: --study FILE --output DIR --out FILE.")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--work-dir", type=Path, default=Path("table1_runs"), help="checkpoints and results")
    parser.add_argument("--dataset", type=_dataset, default=PAPER_DATASET,
                        help="binary images: a dataset name, or your own data as a JSON dataset spec, e.g. "
                             '\'{"path": "data/mine.npz", "shape": [20, 20]}\' (docs/data.md)')
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[1000, 1000])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8], choices=[2, 4, 8])
    parser.add_argument("--losses", nargs="+", default=[g[0] for g in GROUPS], choices=[g[0] for g in GROUPS],
                        help="the FARM row groups: mc (the MADE loss), ensemble (the FARM loss), ensemble+kl")
    parser.add_argument("--recipe", type=_recipe, default={},
                        help='training settings for every row as JSON, e.g. \'{"direct_connections": true, '
                             '"dropout": 0.3, "lr_schedule": "cosine"}\' (farm_sweep.training.config)')
    parser.add_argument("--fill", default="evidence_weighted", choices=FILLS)
    parser.add_argument("--protocol", default="paper", choices=PROTOCOLS,
                        help="how occlusions are drawn and averaged (farm_sweep.occlusions); paper = the FARM "
                             "paper's code, the one to compare with its numbers")
    parser.add_argument("--num-occlusions", type=int, default=100)
    parser.add_argument("--images-per-occlusion", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser.parse_args(argv)


def _recipe(text: str) -> dict:
    try:
        recipe = parse_json(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not isinstance(recipe, dict):
        raise argparse.ArgumentTypeError("give a JSON object of training settings")
    if ROW_FIELDS & recipe.keys():
        raise argparse.ArgumentTypeError(f"{', '.join(sorted(ROW_FIELDS & recipe.keys()))}: set by each row; "
                                         "leave them out")
    return recipe


def _dataset(text: str) -> str | DatasetSpec:
    """A dataset name, or a JSON dataset spec (its relative path starts at the working directory)."""
    if text in DATASETS:
        return text
    try:
        return DatasetSpec.from_value(json.loads(text))
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r:.60} is neither a dataset ({', '.join(DATASETS)}) nor a JSON "
                                         "dataset spec") from None
    except DataError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # the data and the largest k's orderings, before anything trains
        preflight.check(row_config(table_rows(args.ks, args.losses)[-1], args))
    except ConfigError as error:
        print(f"error: --recipe: {error}", file=sys.stderr)
        return 2
    except preflight.PreflightError as error:
        print(f"error: --dataset: {error.reason}", file=sys.stderr)
        return 2
    results, models = {}, {}
    for row in table_rows(args.ks, args.losses):
        models[row.label] = train_row(row, args)
        results[row.label] = evaluate_row(models[row.label], row, args)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "table1.json").write_text(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, args))
    farm = models[f"FARM + MADE (k = {max(args.ks)})"]
    test = load_dataset(args.dataset, "test", args.data_dir)
    shown = test.images[torch.randperm(len(test.images), generator=torch.Generator().manual_seed(args.seed))[:25]]
    figure = inpainting_figure(farm, shown.to(next(farm.parameters()).device), test.height, test.width,
                               args.out.with_suffix(".png"), baseline=models["MADE (k = 1) baseline"])
    print(f"wrote {args.out}, {figure} and {args.work_dir / 'table1.json'}")
    return 0

