"""The command line of recipes/eval_corruptions.py: get_args_parser(), main(args), run(argv).

A trained model (trained_models.load_trained) on the test split of --data-dir under the CIFAR-C
corruptions (training.robustness.evaluate_corruptions): `<out>/results.json` and a printed table. Every input
is checked before the evaluation starts; a failed run leaves --out as it found it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..corruptions import CORRUPTIONS, SEVERITIES, check_name_and_severity
from ..training.command import HelpFormatter, run_command

__all__ = ["get_args_parser", "main", "run"]


def get_args_parser(add_help: bool = True, prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, add_help=add_help, formatter_class=HelpFormatter,
        description="Accuracy of a trained model under the CIFAR-C corruptions (Hendrycks & Dietterich), per "
                    "corruption and severity, grouped as the LayerAct paper groups them.")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a CIFAR run folder (one seed), its seed_<n>/ folder or the model.pt in it; or a "
                             "fine-tuning run folder (or its checkpoint_finetuned.pt / checkpoint_baseline.pt)")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the data the model was trained on: its test split is corrupted (a CIFAR run: the "
                             "ImageFolder's test/ or the torchvision CIFAR root; a fine-tuning run: the split it "
                             "evaluated on, val/ or else test/)")
    parser.add_argument("--corruptions-dir", type=Path, default=None,
                        help="the official CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy, labels.npy) to use "
                             "instead of generating the corruptions")
    parser.add_argument("--corruptions", nargs="+", default=None, metavar="NAME",
                        help=f"which corruptions (default: all {len(CORRUPTIONS)}: {' '.join(CORRUPTIONS)})")
    parser.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), metavar="N",
                        help="which severities, from 1 (mild) to 5 (severe)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="results.json of this recipe (or a run's seed_<n>/corruptions.json) for another model "
                             "over the same corruptions and severities: adds CE per corruption and mCE")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corruptions")
    parser.add_argument("--batch-size", type=int, default=256, help="images per evaluated batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<index>")
    parser.add_argument("--amp", action="store_true",
                        help="score under bfloat16 autocast, as a run trained with --amp is tested")
    parser.add_argument("--channels-last", action="store_true", help="channels-last inputs and weights")
    parser.add_argument("--out", required=True, type=Path, help="folder for results.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <out>/results.json")
    return parser


def _check_args(args: argparse.Namespace):
    """ValueError / FileNotFoundError naming the flag, before anything is loaded; returns (baseline, device)."""
    from ..training.distributed import resolve_device
    from ..training.outdir import check_output_path
    from ..training.robustness import check_baseline

    if not args.corruptions or not args.severities:
        raise ValueError("--corruptions and --severities need at least one value each")
    for name in args.corruptions:
        check_name_and_severity(name, 1)
    for severity in args.severities:
        if severity not in SEVERITIES:
            raise ValueError(f"--severities must be among {' '.join(map(str, SEVERITIES))}, got {severity}")
    for key in ("seed", "batch_size"):
        if getattr(args, key) < (0 if key == "seed" else 1):
            raise ValueError(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'seed' else 'positive'}, got "
                             f"{getattr(args, key)}")
    out = check_output_path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        raise ValueError(f"{str(out / 'results.json')!r} exists; pass --overwrite to replace it, or choose another "
                         f"--out")
    if args.corruptions_dir is not None:
        from ..corruptions.files import cifar_c_paths

        for name in args.corruptions:
            cifar_c_paths(args.corruptions_dir, name)
    baseline = None
    if args.baseline is not None:
        if not args.baseline.is_file():
            raise FileNotFoundError(f"--baseline {str(args.baseline)!r} does not exist; give the results.json of an "
                                    f"earlier evaluation")
        try:
            baseline = json.loads(args.baseline.read_text())
        except ValueError as err:
            raise ValueError(f"--baseline {str(args.baseline)!r} is not JSON ({err})") from None
        try:
            check_baseline(baseline, args.corruptions, sorted(set(args.severities)))
        except ValueError as err:
            raise ValueError(f"--baseline {str(args.baseline)!r}: {err}") from None
    return baseline, resolve_device(args.device)


def _check_official_size(corruptions_dir: Path, name: str, images) -> None:
    """The official files hold 32x32 images: refuse a model tested at another size before evaluating."""
    import numpy as np

    from ..corruptions.files import cifar_c_paths

    shape = np.load(cifar_c_paths(corruptions_dir, name)[0], mmap_mode="r").shape
    if len(shape) == 4 and tuple(shape[1:3]) != tuple(images.shape[-2:]):
        raise ValueError(f"--corruptions-dir holds {shape[1]}x{shape[2]} images; the model is tested on "
                         f"{images.shape[-2]}x{images.shape[-1]}: leave --corruptions-dir out to generate the "
                         f"corruptions at the model's size")


def main(args: argparse.Namespace) -> dict:
    """Check, load, evaluate, write `<out>/results.json`; returns it (bad input raises ValueError /
    FileNotFoundError before the evaluation)."""
    import torch

    from ..training.outdir import claim_output
    from ..training.progress import say
    from ..training.results import write_json
    from ..training.robustness import evaluate_corruptions, format_corruption_table
    from .trained_models import load_trained

    # a copy with every default filled in: the caller's namespace stays as it was
    args = argparse.Namespace(**{**vars(args), "corruptions": list(args.corruptions or CORRUPTIONS)})
    baseline, device = _check_args(args)
    trained = load_trained(args.checkpoint)
    images, labels = trained.test_images(args.data_dir)
    if args.corruptions_dir is not None:
        from ..corruptions.files import check_labels

        _check_official_size(args.corruptions_dir, args.corruptions[0], images)
        check_labels(args.corruptions_dir, trained.num_classes)
    with claim_output(args.out) as out:
        severities = sorted(set(args.severities))
        say(f"evaluating on {len(images)} test images: clean, then {len(args.corruptions)} corruption"
            f"{'s' if len(args.corruptions) > 1 else ''} x {len(severities)} severit"
            f"{'ies' if len(severities) > 1 else 'y'}")
        model = trained.model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        results = evaluate_corruptions(
            model, images, labels, trained.mean, trained.std, corruptions=args.corruptions,
            severities=args.severities, corruptions_dir=args.corruptions_dir, batch_size=args.batch_size,
            device=device, seed=args.seed, baseline=baseline, amp=args.amp, channels_last=args.channels_last,
            progress=lambda line: print(line, file=sys.stderr, flush=True))
        record = {"model": trained.description, "data_dir": str(args.data_dir), "device": str(device),
                  "baseline": str(args.baseline) if args.baseline is not None else None, **results}
        write_json(record, out / "results.json")
    print(format_corruption_table(results))
    print(f"results in {out / 'results.json'}")
    return record


def run(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Command-line entry point: exit 0, or 2 after one `error:` line (bad input, nothing written)."""
    return run_command(get_args_parser(prog=prog), main, argv, on_interrupt="nothing was written; run it again")
