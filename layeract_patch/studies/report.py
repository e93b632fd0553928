"""report.md from runs.csv: per table, best / mean +- std, 95% CI, Welch's p against the plain activations run
beside (SiLU, ReLU; GELU for LA-GELU), the paper's
numbers beside ours, the per-sample loss std (Table 5), how fast the training loss falls early (Figs. 3-4),
plain sentences on what the data support, figures.

    .venv/bin/python recipes/reproduce.py --report-only --out DIR    # rebuild DIR/report.md from DIR/runs.csv
"""
from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..training.cifar_config import CIFAR_MODEL_SPECS, model_title
from . import paper_numbers as paper
from .figures import plot_accuracy, plot_early_loss, training_losses
from .paper_numbers import act_label
from .stats import Welch, confidence_interval, mean, sample_std, welch_test

__all__ = ["read_runs", "Group", "ActStats", "group_runs", "build_report", "act_label", "ALPHA"]

ALPHA = 0.05
PYTHON = ".venv/bin/python"  # the README's set-up puts it there: commands in a report work from the repository root
# the plain activations LayerAct is compared with, where a table has their runs: the paper's two, and GELU
REFERENCES = ("silu", "relu", "gelu")
# CIFAR-C group means (see reproduce.CORRUPTION_COLUMNS), in the paper's order
ROBUSTNESS = (("c_clean", "clean"), ("c_total", "Total"), ("c_noise", "Noise"), ("c_blur", "Blur"),
              ("c_digital", "Digital"), ("c_weather", "Weather"), ("c_extra", "Extra"))
_NUMERIC = ("depth", "seed", "iterations", "test_top1", "test_top5", "test_loss", "test_loss_std", "val_top1",
            "wall_seconds", "train_seconds", "max_iter", "lr", "batch_size", "eval_every",
            *(column for column, _ in ROBUSTNESS))


def read_runs(path) -> List[Dict]:
    """runs.csv rows with numbers as numbers (empty cells -> None) and `amp` as a bool."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in _NUMERIC:
            if key in row:
                value = row[key]
                row[key] = None if value in ("", None) else (int(float(value)) if key in
                                                             ("depth", "seed", "iterations", "max_iter",
                                                              "batch_size", "eval_every") else float(value))
        row["amp"] = str(row.get("amp", "")).strip().lower() in ("true", "1")
    return rows


@dataclass
class ActStats:
    act: str
    n: int
    best: float
    mean: float
    std: float
    ci: Optional[Tuple[float, float]]
    loss_std_mean: Optional[float]
    loss_std_sd: Optional[float]
    vs: Dict[str, Optional[Welch]]  # reference act -> Welch test on top-1
    loss_std_vs: Dict[str, Optional[Welch]]  # reference act -> Welch test on the per-sample loss std


@dataclass
class Group:
    """One table: runs sharing model, depth, norm, init, data set, schedule length and precision."""
    model: str
    depth: Optional[int]
    norm: str
    init: str
    dataset: str
    iterations: int
    amp: bool
    rows: List[Dict]
    acts: "OrderedDict[str, ActStats]"

    @property
    def key(self):
        return self.model, self.depth, self.norm, self.dataset

    @property
    def title(self) -> str:
        model = model_title(self.model, self.depth)
        norm = {"bn": "batch norm", "ln": "layer norm", "lnc": "channel layer norm (ConvNeXt's)",
                "none": "no normalization"}.get(self.norm, self.norm)
        spec = CIFAR_MODEL_SPECS.get(self.model)
        init = {"he": "He init", "torch": "PyTorch's default init (the authors')",
                **dict(spec.init_titles if spec else ())}.get(self.init, self.init)
        return (f"{model}, {norm}, {init}, {self.dataset.upper().replace('CIFAR', 'CIFAR-')}, "
                f"{self.iterations:,} iterations" + (", bf16 autocast" if self.amp else ""))

    @property
    def slug(self) -> str:
        return (f"{self.model}{self.depth or ''}_{self.norm}_{self.init}_{self.dataset}_it{self.iterations}"
                + ("_bf16" if self.amp else ""))


# the paper's row order; other activations follow in the order runs.csv names them
PAPER_ORDER = ("relu", "silu", "hardsilu", "la_silu", "la_hardsilu", "la_silu_affine", "la_hardsilu_affine",
               "gelu", "la_gelu", "la_gelu_affine")


def _paper_order(act: str) -> int:
    return PAPER_ORDER.index(act) if act in PAPER_ORDER else len(PAPER_ORDER)


def _values(rows: Sequence[Dict], act: str, metric: str) -> List[float]:
    return [r[metric] for r in rows if r["act"] == act and r.get(metric) is not None]


def group_runs(rows: Sequence[Dict]) -> List[Group]:
    """Rows grouped into tables, activations in the paper's order, each with its statistics."""
    tables: "OrderedDict[tuple, List[Dict]]" = OrderedDict()
    for row in rows:
        key = (row["model"], row["depth"], row["norm"], row["init"], row["dataset"], row["iterations"], row["amp"])
        tables.setdefault(key, []).append(row)
    groups = []
    for (model, depth, norm, init, dataset, iterations, amp), members in tables.items():
        acts: "OrderedDict[str, ActStats]" = OrderedDict()
        for act in sorted(dict.fromkeys(r["act"] for r in members), key=_paper_order):
            top1 = _values(members, act, "test_top1")
            loss_std = _values(members, act, "test_loss_std")
            acts[act] = ActStats(
                act, len(top1), max(top1), mean(top1), sample_std(top1), confidence_interval(top1),
                mean(loss_std) if loss_std else None, sample_std(loss_std) if loss_std else None,
                {ref: welch_test(top1, _values(members, ref, "test_top1")) for ref in REFERENCES
                 if ref != act and any(r["act"] == ref for r in members)},
                {ref: welch_test(loss_std, _values(members, ref, "test_loss_std")) for ref in REFERENCES
                 if ref != act and loss_std and _values(members, ref, "test_loss_std")})
        groups.append(Group(model, depth, norm, init, dataset, iterations, amp, members, acts))
    return groups


def _references(group: Group) -> List[str]:
    """The reference activations this table has runs of: its p-value columns."""
    return [ref for ref in REFERENCES if ref in group.acts]


def _p_columns(refs: Sequence[str], label: str = "p") -> Tuple[str, str]:
    """The header cells and the separator cells of the p-value columns, each with its leading " | "."""
    return "".join(f" | {label} vs {act_label(ref)}" for ref in refs), "---|" * len(refs)


def _p(test: Optional[Welch]) -> str:
    if test is None:
        return "–"
    return "<0.001" if test.p < 0.001 else f"{test.p:.2g}"


def _num(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pair(pair) -> str:
    if pair is None:
        return "–"
    best, avg = pair
    return f"{avg:.2f} (mean)" if best is None else f"{best:.2f} / {avg:.2f}"


def _spread(values_mean: float, std: Optional[float], n: int, digits: int = 2) -> str:
    """mean ± std over seeds; one seed has no spread to show (not "± 0")."""
    return f"{values_mean:.{digits}f}" if n < 2 or std is None else f"{values_mean:.{digits}f} ± {std:.{digits}f}"


def _verdict(test: Welch) -> str:
    if test.p < ALPHA:
        return f"significant at the {ALPHA:.0%} level"
    return "not significant (a difference this size is consistent with seed-to-seed noise)"


def _compared(act: str, ref: str) -> bool:
    """Each pair once: SiLU is compared with ReLU, never ReLU with SiLU again."""
    return act not in REFERENCES or REFERENCES.index(ref) > REFERENCES.index(act)


def _paper_direction(ours: float, key, act: str, ref: str, numbers) -> str:
    mine, theirs = numbers(key, act), numbers(key, ref)
    if not (mine and theirs):
        return ""
    claimed = mine[1] - theirs[1]
    return f" The paper: {claimed:+.2f} ({'same' if (claimed > 0) == (ours > 0) else 'opposite'} direction)."


def _sentences(group: Group) -> List[str]:
    lines = []
    for act, stats in group.acts.items():
        for ref, test in stats.vs.items():
            if not _compared(act, ref):
                continue
            other = group.acts[ref]
            head = f"{act_label(act)} vs {act_label(ref)}, test top-1"
            if test is None:
                lines.append(f"{head}: {stats.mean - other.mean:+.2f} points (n={stats.n} vs {other.n}): "
                             f"too few seeds for a test (2 per activation needed).")
                continue
            lines.append(f"{head}: {test.difference:+.2f} points, p={_p(test)} (n={stats.n} vs {other.n}): "
                         f"{_verdict(test)}."
                         + _paper_direction(test.difference, group.key, act, ref, paper.paper_accuracy))
        for ref, test in stats.loss_std_vs.items():
            if test is not None and _compared(act, ref):
                lines.append(f"{act_label(act)} vs {act_label(ref)}, per-sample test-loss std (Table 5; lower = "
                             f"more balanced): {test.difference:+.3f}, p={_p(test)}: {_verdict(test)}."
                             + _paper_direction(test.difference, group.key, act, ref, paper.paper_loss_std))
    return lines


def _table(group: Group) -> List[str]:
    refs = _references(group)
    heads, rules = _p_columns(refs)
    lines = [f"| activation | n | best | mean ± std | 95% CI{heads} | paper best / mean | loss std (ours) "
             f"| paper loss std |", f"|---|---|---|---|---|{rules}---|---|---|"]
    for act, s in group.acts.items():
        ci = "–" if s.ci is None else f"[{s.ci[0]:.2f}, {s.ci[1]:.2f}]"
        loss = "–" if s.loss_std_mean is None else _spread(s.loss_std_mean, s.loss_std_sd, s.n, 3)
        lines.append(f"| {act_label(act)} | {s.n} | {s.best:.2f} | {_spread(s.mean, s.std, s.n)} | {ci} "
                     + "".join(f"| {_p(s.vs.get(ref))} " for ref in refs)
                     + f"| {_pair(paper.paper_accuracy(group.key, act))} | {loss} "
                     f"| {_pair(paper.paper_loss_std(group.key, act))} |")
    return lines


def _robustness(group: Group) -> List[str]:
    """The CIFAR-C table (the AAAI-2025 version's claim): group means over seeds, Welch's p of Total vs the
    references."""
    acts = [act for act in group.acts if _values(group.rows, act, "c_total")]
    if not acts:
        return []
    refs = _references(group)
    heads, rules = _p_columns(refs, "p(Total)")
    lines = ["Robustness: top-1 (%) on the test set under the 19 CIFAR-C corruptions generated on the fly "
             "(severities 1-5; `layeract_patch.corruptions`), group means as the paper's appendix groups them; "
             "mean ± std over seeds.", "",
             "| activation | n | " + " | ".join(label for _, label in ROBUSTNESS) + heads + " |",
             "|---|---|" + "---|" * len(ROBUSTNESS) + rules]
    sentences = []
    for act in acts:
        cells = []
        for column, _ in ROBUSTNESS:
            values = _values(group.rows, act, column)
            cells.append("–" if not values else _spread(mean(values), sample_std(values), len(values)))
        total = _values(group.rows, act, "c_total")
        tests = {ref: welch_test(total, _values(group.rows, ref, "c_total")) if ref != act else None
                 for ref in refs}
        lines.append(f"| {act_label(act)} | {len(total)} | " + " | ".join(cells)
                     + "".join(f" | {_p(tests[ref])}" for ref in refs) + " |")
        for ref, test in tests.items():
            if test is not None and _compared(act, ref):
                sentences.append(f"{act_label(act)} vs {act_label(ref)}, corrupted top-1 (Total): "
                                 f"{test.difference:+.2f} points, p={_p(test)}: {_verdict(test)}.")
    return lines + [""] + [f"- {s}" for s in sentences] + ([""] if sentences else [])


def early_loss(out: Path, row: Dict) -> Optional[float]:
    """Mean training loss of one run over its logged windows up to the first learning-rate drop: the area
    under the early part of the paper's Figs. 3-4 curves, so lower = the loss fell faster. None without a log."""
    first_drop = int(str(row["milestones"]).split()[0])
    losses = [loss for step, loss in training_losses(out, row).items() if step <= first_drop]
    return sum(losses) / len(losses) if losses else None


def _early_training(group: Group, out: Path) -> List[str]:
    """Figs. 3-4 as numbers: each activation's early training loss, mean ± std over seeds, Welch's p vs the
    references."""
    values = {act: [v for v in (early_loss(out, r) for r in group.rows if r["act"] == act) if v is not None]
              for act in group.acts}
    values = {act: v for act, v in values.items() if v}
    if not values:
        return []
    first_drop = min(int(str(r["milestones"]).split()[0]) for r in group.rows)
    refs = _references(group)
    heads, rules = _p_columns(refs)
    lines = [f"Early training (the paper's Figs. 3-4): mean training loss over the first {first_drop:,} iterations "
             f"(up to the first learning-rate drop; lower = the loss fell faster), mean ± std over seeds.", "",
             f"| activation | n | early training loss{heads} |", f"|---|---|---|{rules}"]
    sentences = []
    for act, mine in values.items():
        tests = {ref: welch_test(mine, values[ref]) if ref in values and ref != act else None for ref in refs}
        lines.append(f"| {act_label(act)} | {len(mine)} | {_spread(mean(mine), sample_std(mine), len(mine), 3)}"
                     + "".join(f" | {_p(tests[ref])}" for ref in refs) + " |")
        sentences += [f"{act_label(act)} vs {act_label(ref)}, early training loss: {test.difference:+.3f}, "
                      f"p={_p(test)}: {_verdict(test)}." for ref, test in tests.items()
                      if test is not None and _compared(act, ref)]
    return lines + [""] + [f"- {s}" for s in sentences] + ([""] if sentences else [])


def _schedule(group: Group) -> str:
    settings = sorted({(r["max_iter"], r["milestones"], r["batch_size"], r["lr"]) for r in group.rows},
                      key=str)
    ran = "; ".join(f"{int(m):,} iterations, lr {lr:g} / 10 at {' and '.join(f'{int(x):,}' for x in str(ms).split())}"
                    f", batch {int(b)}" for m, ms, b, lr in settings)
    p = paper.PAPER_SCHEDULE
    text = (f"Schedule run: {ran}. The paper's: {p['iterations']:,} iterations, lr {p['lr']} / 10 at "
            f"{p['milestones'][0]:,} and {p['milestones'][1]:,}, batch {p['batch_size']}.")
    if group.amp:
        text += " Precision: bfloat16 autocast (the paper's runs are float32)."
    if group.iterations < p["iterations"]:
        text += (f" This is {100 * group.iterations / p['iterations']:.2g}% of the paper's training: absolute accuracies "
                 f"sit far below its column and are not comparable with it; only the activations' comparison "
                 f"under the same schedule is.")
    return text


def _failed(out: Path) -> List[str]:
    """Runs whose last attempt ended in an error (e.g. a diverged loss), from meta/*.json."""
    lines = []
    for path in sorted((out / "meta").glob("*.json")):
        meta = json.loads(path.read_text())
        name = meta["spec"]["name"]
        if meta.get("returncode") not in (0, 130, None) and not (out / "runs" / name / "results.json").is_file():
            log = out / "logs" / f"{name}.log"
            last = log.read_text().strip().splitlines()[-1] if log.is_file() and log.read_text().strip() else ""
            lines.append(f"- `{name}`: exit {meta['returncode']}: {last}")
    return lines


def _shown(path) -> str:
    """`path` as a report shows it: relative to the working folder when it lies under it, else as it is."""
    relative = os.path.relpath(os.path.abspath(path))
    return str(path) if relative.startswith("..") else relative


def _data(dataset: str, path: str, source: str) -> str:
    """What the runs trained on, for a reader: the data set, and the folder only where it can be found again (under
    the working folder); another machine's absolute path would mean nothing to them."""
    name = dataset.upper().replace("CIFAR", "CIFAR-")
    where = _shown(path) if path else ""
    if not source.startswith("imagefolder:"):
        return name + (f" (torchvision's release, in `{where}`)" if where and not os.path.isabs(where) else "")
    folder = where if where and not os.path.isabs(where) else Path(path).name
    return f"{name} as an ImageFolder (`{folder}`, loaded as `{source}`)"


def build_report(out, figures: bool = True) -> Path:
    """Write out/report.md (and out/figures/*.png when matplotlib is importable) from out/runs.csv."""
    out = Path(out)
    rows = read_runs(out / "runs.csv")
    groups = group_runs(rows)
    datasets = sorted({(r["dataset"], r.get("data_dir", ""), r.get("data_source") or "") for r in rows})
    lines = ["# LayerAct study: the paper's tables, re-measured", "",
             f"{len(rows)} finished runs from `runs.csv`; rebuild this file from the repository root with "
             f"`{PYTHON} recipes/reproduce.py --report-only --out {_shown(out)}`. The exact command of every run is "
             f"in runs.csv (`command`).", "",
             "Data: " + "; ".join(_data(d, path, source) for d, path, source in datasets)
             + ". Test top-1 in %, on the test set, with the weights of the best validation accuracy (10% of the "
               "training set held out), as in the paper.", "",
             f"How to read: n = seeds; CI = 95% Student-t interval of the mean; p = Welch's two-sided t-test of "
             f"the mean against each plain activation run under the same settings (SiLU, ReLU; GELU for "
             f"LA-GELU); significant means p < {ALPHA}. With few "
             f"seeds only large differences can reach significance: a non-significant difference is not "
             f"evidence of no difference, and with many comparisons about 1 in 20 reaches p < 0.05 by chance.",
             ""]
    failed = _failed(out)
    for group in groups:
        source = paper.SOURCES.get(group.key)
        lines += [f"## {group.title}", "", f"Paper: {source}." if source else "Paper: no published numbers for "
                  "this setting.", "", _schedule(group), ""]
        lines += _table(group) + ["", "What the data support:", ""]
        lines += [f"- {s}" for s in _sentences(group) or ["no comparison: one activation only."]]
        lines.append("")
        lines += _early_training(group, out)
        lines += _robustness(group)
        if figures:
            made = [plot_early_loss(group, out), plot_accuracy(group, out)]
            if all(path is None for path in made):
                lines += [f"(Figures skipped: matplotlib is not installed; `{PYTHON} -m pip install matplotlib` and "
                          f"rerun `--report-only`.)", ""]
            else:
                lines += [f"![{path.stem}](figures/{path.name})" for path in made if path is not None] + [""]
    if failed:
        lines += ["## Runs that did not finish", "",
                  "Not in the tables above (a diverged loss is a result too: the recipe stops on NaN):", ""]
        lines += failed + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
