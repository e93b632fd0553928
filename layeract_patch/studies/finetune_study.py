"""What a swap costs a trained model, and what fine-tuning gives back: a grid of fine-tuning runs and its table.

For every trained CIFAR model of a study folder (runs/<name>/seed_<n>/model.pt, as recipes/reproduce.py
leaves them) and every budget B, three fine-tuning runs of recipes/finetune.py's logic:

    calibrated_itB  --act <LA>_affine --calibrate N --max-iter B --baseline
                    (original, plain swap, calibrated swap; fine-tuned from the calibrated swap; the control:
                    the original fine-tuned for the same B)
    plain_itB       --act <LA>_affine --max-iter B  (fine-tuned from the plain swap: same parameters, weight 1
                    and bias 0, so the two starts differ only in calibration)

<LA> is the LayerAct of the source's family (catalogue.layer_act_for: hard-swish -> LA-HardSiLU, else
LA-SiLU). Every run keeps its own folder and results.json; rerunning continues (finished runs are kept,
interrupted ones resume). `collect` + `format_table` turn the folders into one row per (source, state, budget)
with mean, std and n over seeds, and paired t-tests of calibrated against plain starts.
"""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .. import catalogue
from ..training.cifar_config import timm_model_name
from ..training.finetune import FinetuneConfig, run_finetune
from .stats import paired_t_test

__all__ = ["GridConfig", "sources", "source_name", "plan", "run_grid", "collect", "format_table", "write_table"]


@dataclass(frozen=True)
class Source:
    name: str          # e.g. relu_s0 (a ResNet-20), cifar_mobilenetv3_hardsilu_s0 (any other model): see source_name
    act: str           # what it was trained with
    seed: int
    weights: Path
    model: str         # timm name, e.g. cifar_resnet20


@dataclass
class GridConfig:
    study: Path                    # a study folder with runs/<name>/seed_<n>/model.pt
    data_dir: str
    out: Path
    budgets: Sequence[int] = (100, 300, 1000)
    calibrate: int = 512
    acts: Optional[Sequence[str]] = None  # only sources trained with these
    finetune: Dict[str, object] = field(default_factory=dict)  # other FinetuneConfig fields (lr, batch_size, ...)


def source_name(model: str, act: str, seed: int) -> str:
    """The folder a source's fine-tuning runs go to: <act>_s<seed> for a ResNet-20 (the first study's sources, whose
    finished runs live under these names), <timm name>_<act>_s<seed> for every other model, so two models trained
    with the same activation in one study (the `cpu` preset's ResNet-20 and ResNet-32) never share a folder."""
    return f"{act}_s{seed}" if model == "cifar_resnet20" else f"{model}_{act}_s{seed}"


def sources(study: Path, acts: Optional[Sequence[str]] = None) -> List[Source]:
    """The trained models of a study folder, in a stable order; FileNotFoundError when there are none."""
    found = []
    for results in sorted(Path(study).glob("runs/*/results.json")):
        args = json.loads(results.read_text()).get("args", {})
        for weights in sorted(results.parent.glob("seed_*/model.pt")):
            seed = int(weights.parent.name.split("_")[1])
            model = timm_model_name(args.get("model", "cifar_resnet"), args.get("depth"))
            if acts is None or args.get("act") in acts:
                found.append(Source(source_name(model, args.get("act"), seed), args.get("act"), seed, weights, model))
    if not found:
        raise FileNotFoundError(f"{str(study)!r} holds no trained model (runs/<name>/seed_<n>/model.pt with its "
                                f"results.json); give a folder recipes/reproduce.py wrote")
    return found


def target_for(act: str) -> str:
    """The affine LayerAct of the source's family."""
    return catalogue.layer_act_for(catalogue.lookup(act)).name + "_affine"


def plan(cfg: GridConfig) -> Iterator[Tuple[Source, str, int, FinetuneConfig]]:
    for source in sources(cfg.study, cfg.acts):
        for budget in cfg.budgets:
            for start in ("calibrated", "plain"):
                out = cfg.out / source.name / f"{start}_it{budget}"
                config = FinetuneConfig(
                    model=f"timm/{source.model}", data_dir=cfg.data_dir, out=str(out), weights=str(source.weights),
                    model_kwargs={"act": source.act}, act=target_for(source.act), max_iter=budget,
                    calibrate=cfg.calibrate if start == "calibrated" else None, baseline=start == "calibrated",
                    seed=source.seed, **cfg.finetune)
                yield source, start, budget, config


def run_grid(cfg: GridConfig, stream=None) -> None:
    """Run every cell not finished yet (an interrupted one resumes)."""
    for source, start, budget, config in plan(cfg):
        results = Path(config.out) / "results.json"
        done = results.exists() and "finetuned" in json.loads(results.read_text())
        if done:
            continue
        print(f"{source.name}: {start} start, {budget} iterations -> {config.out}", flush=True)
        run_finetune(replace(config, resume=results.exists()), stream=stream)


# ------------------------------------------------------------------------------------------------ table


def collect(out: Path) -> List[dict]:
    """One row per (source act, seed, state, budget) from the run folders under `out`."""
    rows = []
    for results_path in sorted(Path(out).glob("*/*_it*/results.json")):
        results = json.loads(results_path.read_text())
        if "finetuned" not in results:  # a cell still running: its rows come when it has finished
            continue
        act, seed = results_path.parts[-3].rsplit("_s", 1)
        start, budget = results_path.parent.name.rsplit("_it", 1)
        base = {"source": act, "seed": int(seed), "budget": int(budget)}
        states = {"calibrated": [("original", "original", 0), ("plain swap", "plain_swap", 0),
                                 ("calibrated swap", "converted", 0), ("from calibrated", "finetuned", None),
                                 ("control", "baseline", None)],
                  "plain": [("from plain swap", "finetuned", None)]}[start]
        for state, key, iterations in states:
            if key in results:
                rows.append({**base, "state": state, "iterations": base["budget"] if iterations is None else 0,
                             "top1": results[key]["top1"], "loss_std": results[key]["loss_std"]})
    return rows


def _summary(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_table(rows: List[dict]) -> str:
    """Markdown: test top-1 and per-sample loss std, mean ± std over seeds (n), per source and state."""
    lines = ["| source | state | iterations | n | test top-1 % | loss std |", "|---|---|---|---|---|---|"]
    order = ["original", "plain swap", "calibrated swap", "from plain swap", "from calibrated", "control"]
    for source in sorted({r["source"] for r in rows}):
        seen = set()
        for state in order:
            for iterations in sorted({r["iterations"] for r in rows if r["state"] == state}):
                cell = [r for r in rows if r["source"] == source and r["state"] == state
                        and r["iterations"] == iterations]
                by_seed = {r["seed"]: r for r in cell}  # the no-training states repeat in every budget's run
                if not by_seed or (state, iterations) in seen:
                    continue
                seen.add((state, iterations))
                top1 = [r["top1"] for r in by_seed.values()]
                std = [r["loss_std"] for r in by_seed.values()]
                lines.append(f"| {source} | {state} | {iterations} | {len(by_seed)} | {_summary(top1)} | "
                             f"{_summary(std)} |")
    return "\n".join(lines)


def paired_comparisons(rows: List[dict]) -> str:
    """Calibrated against plain start at each budget: mean difference of top-1 over seeds and a paired t-test."""
    lines = ["| source | iterations | n | calibrated - plain start, top-1 points | p (paired t) |",
             "|---|---|---|---|---|"]
    for source in sorted({r["source"] for r in rows}):
        for iterations in sorted({r["iterations"] for r in rows if r["source"] == source and r["iterations"]}):
            pick = {state: {r["seed"]: r["top1"] for r in rows if r["source"] == source and r["state"] == state
                            and r["iterations"] == iterations} for state in ("from calibrated", "from plain swap")}
            seeds = sorted(set(pick["from calibrated"]) & set(pick["from plain swap"]))
            if not seeds:
                continue
            diffs = [pick["from calibrated"][s] - pick["from plain swap"][s] for s in seeds]
            p = paired_t_test(diffs) if len(diffs) > 1 else None
            lines.append(f"| {source} | {iterations} | {len(seeds)} | {_summary(diffs)} | "
                         f"{'–' if p is None else f'{p:.3f}'} |")
    return "\n".join(lines)


def write_table(out: Path, destination: Path) -> Path:
    """cells.csv (every row) and table.md (both tables) into `destination`."""
    rows = collect(out)
    if not rows:
        raise FileNotFoundError(f"{str(out)!r} holds no finished fine-tuning run (<source>_s<seed>/<start>_it<B>/"
                                f"results.json)")
    destination.mkdir(parents=True, exist_ok=True)
    with open(destination / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = ("## Test top-1 and per-sample test-loss std (mean ± std over seeds)\n\n" + format_table(rows)
            + "\n\n## Calibrated against plain start, same budget\n\n" + paired_comparisons(rows) + "\n")
    (destination / "table.md").write_text(text)
    return destination / "table.md"
