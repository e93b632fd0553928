"""The study runner: many recipe runs (one subprocess each, resumable) -> runs.csv -> report.md.

Every run is `python recipes/<recipe>.py ... --out OUT/runs/<name>` with OMP_NUM_THREADS set, so the
study trains through exactly the code a user's recipe command does. Layout of OUT:

    runs/<name>/       the recipe's own output (results.json, history.csv, seed_<s>/checkpoint.pt, ...)
    meta/<name>.json   the run's settings, its exact command(s), wall seconds, exit code
    logs/<name>.log    the recipe's stdout and stderr
    runs.csv           one row per finished run, rebuilt from runs/ and meta/ (never duplicated)
    report.md          see report.py

Resume rule: runs/<name>/results.json -> finished, kept; runs/<name>/seed_<s>/checkpoint.pt -> continued
with --resume; a run folder with neither (a run stopped before its first checkpoint) is cleared and the
run starts again. So rerunning the same command finishes a study without repeating work. With
eval_corruptions (`--eval-corruptions`), a finished run without CIFAR-C results is resumed only to be
evaluated (the recipe's --eval-corruptions is a run-only setting: the training is not repeated).

One runner at a time: OUT is locked as the recipes lock theirs (training/outdir.py), and a second runner
stops, naming the first. A finished run whose runner was killed before writing its meta file gets one
rebuilt from its run folder (said so in the log and in the file). A damaged study file is named, with
what to do, before any run starts.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..training.cifar_config import CIFAR_MODELS, default_lr, default_milestones
from ..training.outdir import claim_output
from ..training.results import write_csv, write_json
from ..training.spine import on_stop_signals
from .presets import RunSpec

__all__ = ["StudyConfig", "Planned", "plan", "launch_order", "overview", "run_study", "rebuild_runs_csv",
           "shell_command", "RUN_COLUMNS", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# CIFAR-C group means (top-1 %, severities 1-5), when the run was evaluated on the corruptions
CORRUPTION_COLUMNS = ("c_clean", "c_total", "c_noise", "c_blur", "c_digital", "c_weather", "c_extra")
RUN_COLUMNS = ("model", "depth", "norm", "act", "init", "seed", "dataset", "iterations", "test_top1", "test_top5",
               "test_loss", "test_loss_std", "val_top1", "wall_seconds", "train_seconds", "max_iter",
               "milestones", "lr", "batch_size", "eval_every", "amp", "data_dir", "data_source", "run_dir",
               "command", *CORRUPTION_COLUMNS)


@dataclass
class StudyConfig:
    out: Path
    data_dir: Path
    data_dir_cifar100: Optional[Path] = None  # default: data_dir (a torchvision root holding both)
    jobs: int = 1
    threads: int = 1
    amp: bool = False
    device: str = "auto"
    eval_corruptions: bool = False
    python: str = sys.executable
    recipes_root: Path = REPO_ROOT  # the folder holding recipes/

    def __post_init__(self) -> None:
        # Absolute paths: the recipes run with the repository as their working directory.
        self.out, self.data_dir = Path(self.out).resolve(), Path(self.data_dir).resolve()
        if self.data_dir_cifar100 is not None:
            self.data_dir_cifar100 = Path(self.data_dir_cifar100).resolve()
        if self.jobs < 1 or self.threads < 1:
            raise ValueError(f"--jobs and --threads must be at least 1, got {self.jobs} and {self.threads}")

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / "runs" / spec.name

    def data_for(self, spec: RunSpec) -> Path:
        return self.data_dir_cifar100 if spec.dataset == "cifar100" and self.data_dir_cifar100 else self.data_dir

    def command(self, spec: RunSpec, resume: bool = False) -> List[str]:
        cmd = [self.python, CIFAR_MODELS[spec.model], *spec.recipe_args(), "--data-dir", str(self.data_for(spec)),
               "--out", str(self.run_dir(spec))]
        if self.device != "auto":
            cmd += ["--device", self.device]
        if self.amp:
            cmd.append("--amp")
        if self.eval_corruptions:
            cmd.append("--eval-corruptions")
        return cmd + (["--resume"] if resume else [])

    def env(self) -> Dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        # The recipes import layeract_patch from this checkout, whatever copy is installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return env


@dataclass
class Planned:
    spec: RunSpec
    status: str  # "done", "evaluate" (trained; CIFAR-C results missing), "resume" or "start"
    command: List[str]


def plan(specs: Sequence[RunSpec], config: StudyConfig) -> List[Planned]:
    """What each run needs: nothing (finished), --resume (a checkpoint exists) or a fresh start."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("the selection holds the same run twice")
    planned = []
    for spec in specs:
        run_dir = config.run_dir(spec)
        if (run_dir / "results.json").is_file():
            evaluated = "corruptions" in _read_json(run_dir / "results.json")
            planned.append(Planned(spec, "done", []) if evaluated or not config.eval_corruptions
                           else Planned(spec, "evaluate", config.command(spec, resume=True)))
        elif (run_dir / f"seed_{spec.seed}" / "checkpoint.pt").is_file():
            planned.append(Planned(spec, "resume", config.command(spec, resume=True)))
        else:
            planned.append(Planned(spec, "start", config.command(spec)))
    return planned


def shell_command(cmd: Sequence[str], threads: int) -> str:
    return f"OMP_NUM_THREADS={threads} " + shlex.join(cmd)


def _read_json(path: Path) -> dict:
    """The JSON object in `path` ({} when there is none); ValueError naming the file and the fix when it is not one."""
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except ValueError as err:  # e.g. a file cut short when its disk filled
        found = err
    if not isinstance(found, dict):
        raise ValueError(_damaged(path, f"not a JSON object ({found})"))
    return found


def _damaged(path: Path, what: str) -> str:
    """The message for a study file that cannot be read: what is wrong, and what to do."""
    if path.parent.name == "meta":
        fix = "delete it and run the study again: a finished run's record is rebuilt from its run folder"
    else:
        fix = ("delete it and run the study again: the run continues from its checkpoint (or starts again when it "
               "has none)")
    return f"study file {str(path)!r} is damaged: {what}; {fix}"


def _code_version(root: Path) -> str:
    """The git commit the recipes ran from (with "+changes" when the checkout differs from it), else "unknown"."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "layeract_patch", "recipes")
    except OSError:
        return "unknown"
    return (commit + ("+changes" if changed else "")) if commit else "unknown"


_running: Dict[int, subprocess.Popen] = {}  # pid -> the recipe processes running now
_running_lock = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it


@contextmanager
def _stoppable():
    """SIGINT and SIGTERM stop the study as Ctrl-C does, also when it was started in the background (a shell
    starts `cmd &` with SIGINT ignored, and the recipes would inherit that). SIGTERM, sent to the runner
    alone, is passed on to the running recipes as SIGINT so they checkpoint; Ctrl-C reaches them directly."""
    def interrupt(signum, frame):
        if signum == signal.SIGTERM:
            with _running_lock:
                for process in _running.values():
                    process.send_signal(signal.SIGINT)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    with on_stop_signals(interrupt):
        yield


def _launch(item: Planned, config: StudyConfig, stop: threading.Event) -> Dict:
    """Run one recipe subprocess to its end; record its meta file. Returns {"name", "returncode", ...}."""
    spec, run_dir = item.spec, config.run_dir(item.spec)
    if stop.is_set():
        return {"name": spec.name, "returncode": None}
    if item.status == "start" and run_dir.exists():
        # Stopped before its first checkpoint: nothing there to continue from; the recipe wants a clean --out.
        shutil.rmtree(run_dir)
    meta_path = config.out / "meta" / f"{spec.name}.json"
    meta = _read_json(meta_path)
    log_path = config.out / "logs" / f"{spec.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Taken before the recipe starts: the checkout may move on while a run trains for an hour, and the
    # record must name the code that ran.
    version = _code_version(config.recipes_root)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shell_command(item.command, config.threads)}\n")
        log.flush()
        with _running_lock:
            if stop.is_set():
                return {"name": spec.name, "returncode": None}
            process = subprocess.Popen(item.command, stdout=log, stderr=subprocess.STDOUT, env=config.env(),
                                       cwd=config.recipes_root)
            _running[process.pid] = process
        try:
            returncode = process.wait()
        finally:
            with _running_lock:
                _running.pop(process.pid, None)
    wall = time.perf_counter() - start
    meta = {
        "spec": {**asdict(spec), "name": spec.name},
        "command": shell_command(config.command(spec), config.threads),  # the run's command; resumes add --resume
        "attempts": meta.get("attempts", []) + [{"command": shell_command(item.command, config.threads),
                                                  "returncode": returncode, "wall_seconds": wall}],
        "wall_seconds": meta.get("wall_seconds", 0.0) + wall,
        "returncode": returncode, "amp": config.amp, "data_dir": str(config.data_for(spec)),
        "code_version": meta.get("code_version", []) + [version],
    }
    write_json(meta, meta_path)  # atomic: a runner killed mid-write keeps the previous meta
    last_line = ""
    if returncode != 0:
        lines = log_path.read_text().strip().splitlines()
        last_line = lines[-1] if lines else ""
    return {"name": spec.name, "returncode": returncode, "wall_seconds": wall, "error": last_line}


def rebuild_runs_csv(out: Path) -> List[Dict]:
    """runs.csv from every finished run under out/runs with its meta file: one row per run, sorted by name.
    ValueError naming the first study file that cannot be read, and what to do about it."""
    out = Path(out)
    rows = []
    for meta_path in sorted((out / "meta").glob("*.json")):
        meta = _read_json(meta_path)
        try:
            spec, schedule = meta["spec"], meta["spec"]["schedule"]
            wall = meta["wall_seconds"]
            row = {
                "model": spec["model"], "depth": spec["depth"] if spec["depth"] is not None else "",
                "norm": spec["norm"], "act": spec["act"], "init": spec["init"], "seed": spec["seed"],
                "dataset": spec["dataset"], "wall_seconds": "" if wall is None else round(wall, 1),
                "max_iter": schedule["max_iter"],
                "milestones": " ".join(map(str, schedule["milestones"] or default_milestones(schedule["max_iter"]))),
                "lr": schedule["lr"] if schedule["lr"] is not None else default_lr(spec["norm"]),
                "batch_size": schedule["batch_size"], "eval_every": min(schedule["eval_every"], schedule["max_iter"]),
                "amp": meta["amp"], "data_dir": meta["data_dir"], "run_dir": f"runs/{spec['name']}",
                "command": meta["command"]}
        except (KeyError, TypeError) as err:
            raise ValueError(_damaged(meta_path, f"it has no {err} entry")) from None
        results_path = out / "runs" / spec["name"] / "results.json"
        results = _read_json(results_path)
        if not results:
            continue
        try:
            seed_run = results["runs"][0]
            test, val = seed_run["test"], seed_run.get("val") or {}
            row.update({
                "iterations": seed_run["iterations"], "test_top1": test["top1"], "test_top5": test.get("top5", ""),
                "test_loss": test["loss"], "test_loss_std": test.get("loss_std", ""), "val_top1": val.get("top1", ""),
                "train_seconds": round(seed_run["train_seconds"], 1),
                # what the recipe says it loaded ("cifar10", or "imagefolder:<name>" for an ImageFolder such as the
                # JPEG export), beside the preset's name for the data set
                "data_source": results.get("dataset", ""),
                **_corruption_cells(results)})
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            what = "an empty 'runs' list" if isinstance(err, IndexError) else f"no {err} entry"
            raise ValueError(_damaged(results_path, f"it has {what}")) from None
        rows.append(row)
    write_csv(rows, out / "runs.csv", RUN_COLUMNS)
    return rows


def _recover_records(planned: Sequence[Planned], config: StudyConfig, log) -> None:
    """A finished run without meta/<name>.json (the runner was killed after its recipe finished, before it could
    record the run) would never reach runs.csv: rebuild its record from the run folder, and say so."""
    recovered = []
    for item in planned:
        meta_path = config.out / "meta" / f"{item.spec.name}.json"
        if item.status not in ("done", "evaluate") or meta_path.is_file():
            continue
        args = _read_json(config.run_dir(item.spec) / "results.json").get("args") or {}
        ran = replace(config, amp=bool(args.get("amp", config.amp)), device=args.get("device") or config.device,
                      eval_corruptions=bool(args.get("eval_corruptions", config.eval_corruptions)))
        write_json({
            "spec": {**asdict(item.spec), "name": item.spec.name},
            "command": shlex.join(ran.command(item.spec)),  # its threads are not known
            "attempts": [], "wall_seconds": None, "returncode": 0, "amp": ran.amp,
            "data_dir": str(args.get("data_dir") or config.data_for(item.spec)), "code_version": [],
            "recovered": f"rebuilt from runs/{item.spec.name}: the runner stopped before recording the finished "
                         f"run; its attempts, wall time, threads and code version are unknown"}, meta_path)
        recovered.append(item.spec.name)
    if recovered:
        log(f"recovered the record of {len(recovered)} finished run(s) whose runner stopped before recording them "
            f"(meta/<name>.json rebuilt from the run folder; wall time and code version unknown): "
            f"{', '.join(recovered)}")


def _corruption_cells(results: Dict) -> Dict:
    found = results.get("corruptions")
    if not found:
        return {}
    groups = {f"c_{name.lower()}": value for name, value in found.get("groups", {}).items()}
    return {"c_clean": found.get("clean", ""), **{c: groups.get(c, "") for c in CORRUPTION_COLUMNS[1:]}}


def run_study(specs: Sequence[RunSpec], config: StudyConfig, log=print) -> Dict:
    """Run every unfinished run (`config.jobs` at a time), keep runs.csv current; returns counts and failures.

    Ctrl-C (or SIGTERM to the runner): the running recipes save a checkpoint and stop, no new run starts,
    and the same command later continues where this one stopped.
    """
    with claim_output(config.out):  # one runner per study folder: a second would clear the first's runs
        return _run_study(specs, config, log)


def launch_order(planned: Sequence[Planned]) -> List[Planned]:
    """The runs a study launches, in its order: the unfinished ones, seed-major (every configuration's seed 0 first,
    so a study stopped part-way has balanced groups)."""
    return sorted((item for item in planned if item.status != "done"), key=lambda item: item.spec.seed)


def overview(planned: Sequence[Planned], config: StudyConfig) -> str:
    """The line a study starts with, and a dry run prints: how many runs, and what each needs."""
    todo = launch_order(planned)
    return (f"{len(planned)} runs: {len(planned) - len(todo)} finished already, "
            f"{sum(i.status == 'resume' for i in todo)} to resume, {sum(i.status == 'start' for i in todo)} to start"
            + (f", {sum(i.status == 'evaluate' for i in todo)} to evaluate on CIFAR-C" if config.eval_corruptions
               else "")
            + f"; {config.jobs} at a time, {config.threads} thread(s) each")


def _run_study(specs: Sequence[RunSpec], config: StudyConfig, log) -> Dict:
    planned = plan(specs, config)
    _recover_records(planned, config, log)
    rebuild_runs_csv(config.out)  # every study file is read now, before any run starts
    todo = launch_order(planned)
    log(overview(planned, config))
    stop = threading.Event()
    failures, finished, interrupted = [], 0, False
    with _stoppable(), ThreadPoolExecutor(max_workers=config.jobs) as pool:
        futures = [pool.submit(_launch, item, config, stop) for item in todo]
        try:
            for future in as_completed(futures):
                result = future.result()
                if result["returncode"] is None:
                    continue
                rows = rebuild_runs_csv(config.out)  # here, in the main thread only: one writer
                if result["returncode"] == 0:
                    finished += 1
                    row = next((r for r in rows if r["run_dir"] == f"runs/{result['name']}"), None)
                    top1 = f"test top1 {row['test_top1']:.2f}" if row else "no results.json"
                    log(f"[{finished + len(failures)}/{len(todo)}] {result['name']}: {top1} "
                        f"({result['wall_seconds']:.0f} s)")
                elif result["returncode"] == 130:
                    interrupted = True
                else:
                    failures.append(result)
                    log(f"[{finished + len(failures)}/{len(todo)}] {result['name']} FAILED "
                        f"(exit {result['returncode']}): {result['error']}")
        except KeyboardInterrupt:
            interrupted = True
            with _running_lock:
                stop.set()  # pending runs return at once; running recipes got the signal too and checkpoint
            for future in futures:
                future.cancel()
    rebuild_runs_csv(config.out)
    return {"runs": len(planned), "finished_now": finished, "failed": failures, "interrupted": interrupted}
