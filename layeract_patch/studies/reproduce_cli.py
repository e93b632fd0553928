"""The command line of recipes/reproduce.py: get_args_parser(), main(args), run(argv).

A preset (presets.py) -> the grid of recipe runs (reproduce.py, resumable) -> runs.csv -> report.md (report.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..training.cifar_config import CIFAR_MODELS
from ..training.command import run_command
from ..training.data import imagefolder_layout
from ..training.outdir import check_output_path
from . import presets
from .report import build_report
from .reproduce import (StudyConfig, launch_order, overview, plan, rebuild_runs_csv, run_study,
                        shell_command)

__all__ = ["get_args_parser", "main", "run"]


def get_args_parser(add_help: bool = True, prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run the LayerAct paper's experiments as a resumable grid of "
                                     "recipe runs and write runs.csv and report.md.", add_help=add_help)
    parser.add_argument("--preset", choices=tuple(presets.PRESETS), default=None,
                        help="paper (full schedule, for a GPU), cpu (reduced, ~3.5 h on 2 cores), cpu_models, sources, "
                             "gelu (CIFAR ConvNeXt: GELU vs LA-GELU), timm_source (timm's MobileNetV3-Small), smoke "
                             "(tiny); each is described in layeract_patch/studies/presets.py")
    parser.add_argument("--acts", nargs="+", default=None, help="only these activations of the preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="these seeds instead of the preset's")
    parser.add_argument("--depths", type=int, nargs="+", default=None, help="only these ResNet depths")
    parser.add_argument("--norms", nargs="+", default=None, help="only these norms (bn, ln, lnc, none)")
    parser.add_argument("--models", nargs="+", default=None, help=f"only these models: {', '.join(CIFAR_MODELS)}")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="this many iterations instead of the preset's (lr drops at 50%% and 75%%)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="CIFAR-10 data: an ImageFolder root (train/, test/) or a torchvision CIFAR root")
    parser.add_argument("--data-dir-cifar100", type=Path, default=None,
                        help="CIFAR-100 data for the paper preset's CIFAR-100 runs (default: --data-dir)")
    parser.add_argument("--out", type=Path, default=None, help="study folder (default runs/study_<preset>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (subprocesses)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast in every run")
    parser.add_argument("--eval-corruptions", action="store_true",
                        help="also evaluate every run on the 19 CIFAR-C corruptions (severities 1-5; finished runs "
                             "are evaluated without retraining) and add a robustness table to the report")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    parser.add_argument("--report-only", action="store_true", help="only rebuild report.md from --out/runs.csv")
    parser.add_argument("--no-figures", action="store_true", help="write report.md without figures")
    return parser


def main(args: argparse.Namespace) -> int:
    """Validate, then run (or list) the study and write its report; ValueError / FileNotFoundError on bad input."""
    if args.report_only:
        if args.out is None or not (args.out / "meta").is_dir():
            raise FileNotFoundError(f"--report-only needs --out pointing at a study folder (with meta/); got {args.out}")
        rebuild_runs_csv(args.out)
        print(f"report in {build_report(args.out, figures=not args.no_figures)}")
        return 0
    if args.preset is None:
        raise ValueError("choose --preset (paper, cpu or smoke), or --report-only")
    specs = presets.select(args.preset, acts=args.acts, seeds=args.seeds, depths=args.depths, norms=args.norms,
                           models=args.models, max_iter=args.max_iter)
    config = StudyConfig(out=args.out or Path("runs") / f"study_{args.preset}", data_dir=args.data_dir,
                         data_dir_cifar100=args.data_dir_cifar100, jobs=args.jobs, threads=args.threads,
                         amp=args.amp, device=args.device, eval_corruptions=args.eval_corruptions)
    check_output_path(config.out)  # a file, or a folder that cannot be written: refused, also for --dry-run
    for needed in {config.data_for(spec) for spec in specs}:  # a dry run says what a real run would: this too
        if not needed.exists():
            raise FileNotFoundError(f"data dir '{needed}' does not exist; point --data-dir at CIFAR-10 "
                                    f"({imagefolder_layout()}, or a torchvision root)")
    if args.dry_run:
        planned = plan(specs, config)
        todo = launch_order(planned)
        print(overview(planned, config))
        for number, item in enumerate(todo, 1):
            print(f"[{number}/{len(todo)}] {item.status} {item.spec.name}\n    "
                  f"{shell_command(item.command, config.threads)}")
        print(f"dry run: nothing started; without --dry-run {len(todo)} run{'s' if len(todo) != 1 else ''} would "
              f"start in this order, {config.jobs} at a time")
        return 0
    outcome = run_study(specs, config)
    report = build_report(config.out, figures=not args.no_figures) if (config.out / "runs.csv").is_file() else None
    where = args.out or Path("runs") / f"study_{args.preset}"  # as the user named it, not resolved
    print(f"runs.csv and {report.name} in {where}" if report else f"no finished run yet in {where}")
    if outcome["interrupted"]:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    if outcome["failed"]:
        print(f"{len(outcome['failed'])} run(s) failed; see {config.out / 'logs'} and the report", file=sys.stderr)
        return 1
    return 0


def run(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Command-line entry point: bad input -> one `error:` line and exit 2."""
    return run_command(get_args_parser(prog=prog), main, argv, on_interrupt="run the same command again to continue")
