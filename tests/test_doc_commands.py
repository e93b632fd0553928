"""The docs are for users: every command in them works as written, from a fresh shell, and they chain.

`test_every_doc_command_runs_in_order_at_a_tiny_size` runs each command of the user docs (USER_DOCS: README.md,
then every docs/*.md in the order of the README's "Where next" table; their ```bash blocks line by line and every
inline command they name), in that order, in one folder laid out as the repository root, with bash, a PATH
without the venv and no VIRTUAL_ENV: a command that works only in an activated venv fails here. What one command
writes (runs/r20_la_silu, runs/study_cpu, ...), a later one reads. To run in about a minute, each command is made
tiny in the same documented ways:

- data the docs download, or the user brings, is made here instead (tests never use the network):
  `data` (torchvision's CIFAR-10 in the docs) is an ImageFolder of 10 classes of 32x32 RGB images,
  `data/mnist` a torchvision MNIST root of 20 images, `DIR` an ImageFolder with train/ and val/,
  `mobilenet_v3_small.pth` the untrained model's state_dict, and a pretrained download (`--model timm/resnet18`)
  gets `--weights` with a local file of that architecture;
- TINY flags are appended per script (argparse keeps the last value: fewer iterations, smaller batches, fewer
  seeds, widths and activations, one small model of the zoo);
- REPLACE changes a few words: 4 processes become 2, `--max-iter 500` becomes 2, and without a GPU `--device cuda`
  becomes `--device cpu`;
- NOT_RUN lists the commands that are not run, each with its reason.
A new command in the docs fails this test until it runs here or is listed in NOT_RUN.
"""
import os
import re
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_training import class_image, make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
# The chain, what a newcomer follows: the README, then the docs/ pages in the order of its "Where next" table (a
# fixed order, so what one page writes a later one reads; test_the_docs_pages_run_in_the_readmes_order holds the
# table and this list together, and every docs/*.md is in it).
DOC_ORDER = ("convert.md", "op.md", "recipes.md", "finetune.md", "monitor.md", "speed.md", "loading.md", "layout.md")
USER_DOCS = [ROOT / "README.md", *(ROOT / "docs" / name for name in DOC_ORDER)]
# evidence and reference docs: their commands are linted, not run (they take hours; their outputs are committed)
ALL_DOCS = (USER_DOCS + sorted((ROOT / "docs").rglob("README.md")) + [ROOT / "benchmarks" / "README.md"]
            + [ROOT / "CHANGELOG.md"])

NOT_RUN = {
    "python3 -m venv .venv": "creates the venv this test runs in",
    ".venv/bin/pip install -e '.[test]'": "installs from the network",
    ".venv/bin/python -m pytest -q": "the test suite this test is part of",
    ".venv/bin/pip install matplotlib": "installs from the network (.ci/run does it, then reruns the plot tests)",
}
TINY = {  # script -> flags appended to each of its commands
    "layeract_patch.demo": "--steps 2",
    "recipes/cifar_resnet.py": "--max-iter 4 --eval-every 2 --batch-size 16 --eval-batch-size 64",
    "recipes/cifar_cnn.py": "--max-iter 4 --eval-every 2 --batch-size 16 --eval-batch-size 64",
    "recipes/reproduce.py": "--max-iter 4 --seeds 0 --depths 20 --acts silu la_silu",
    "recipes/eval_corruptions.py": "",  # the test split is tiny already
    "recipes/scale_correlation.py": "--max-iter 4 --widths 4 --seeds 0 --acts relu la_hardsilu --batch-size 4 "
                                    "--eval-samples 32",
    "recipes/finetune.py": "--img-size 32 --batch-size 4 --workers 0",
    "benchmarks/convert_zoo.py": "--models convnext_atto",
    "benchmarks/bench_activation.py": "--shapes 2x4x8x8 --kinds silu --dtypes fp32 --threads 1 --budget 0.02 "
                                      "--repeats 1",
}
REPLACE = [("--nproc_per_node=4", "--nproc_per_node=2"), ("--max-iter 500", "--max-iter 2")]
if not torch.cuda.is_available():
    REPLACE.append(("--device cuda", "--device cpu"))
DOWNLOADS = {"--model timm/resnet18": "--weights resnet18.pth"}  # what the pretrained download would give

COMMAND_SPAN = re.compile(r"^(?:[A-Z_]+=\S+ )*\.venv/bin/\S+ \S")  # an inline span that runs something


def doc_commands(path: Path):
    """The shell commands of a Markdown file in document order: each command line of its ```bash blocks (comments
    dropped, `\\` continuations joined, `a && b` split) and each inline `...` span that runs a program with
    arguments."""
    text = path.read_text()
    found = []
    for block in re.finditer(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if block.group(1) == "bash":
            joined = re.sub(r"\\\n\s*", "", block.group(2))
            for line in joined.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found += [(block.start(), part.strip()) for part in line.split(" && ")]
    outside = re.sub(r"```.*?```", lambda m: " " * len(m.group(0)), text, flags=re.S)
    for span in re.finditer(r"`([^`\n]+)`", outside):
        if COMMAND_SPAN.match(span.group(1)):
            found.append((span.start(), span.group(1)))
    return [command for _, command in sorted(found, key=lambda item: item[0])]


def script_of(command: str) -> str:
    words = shlex.split(command)
    return next((w for w in words if w.startswith(("recipes/", "benchmarks/"))),
                words[words.index("-m") + 1] if "-m" in words else words[0])


def tiny(command: str) -> str:
    """The command as this test runs it: see the module docstring."""
    for old, new in REPLACE:
        command = command.replace(old, new)
    for model, weights in DOWNLOADS.items():
        if model in command and "--weights" not in command:
            command += f" {weights}"
    return f"{command} {TINY[script_of(command)]}".rstrip()


# ---- fast checks of every doc, run or not ---------------------------------------------------------------------

def all_commands():
    return [(path.relative_to(ROOT), command) for path in ALL_DOCS for command in doc_commands(path)]


def test_every_doc_command_works_without_an_activated_venv():
    """python, pip, torchrun and pytest are called as .venv/bin/..., as the set-up commands are: a bare `python`
    or `torchrun` fails in a fresh shell (ModuleNotFoundError, command not found)."""
    bare = re.compile(r"(?<![\w/.-])(?<!-m )(python3?|pip3?|torchrun|pytest)(?=\s|$)")  # not .venv/bin/x, -m x
    wrong = [(str(path), command) for path, command in all_commands()
             if bare.search(command) and not command.startswith("python3 -m venv .venv")]
    assert not wrong, f"call these through .venv/bin/: {wrong}"
    assert len(all_commands()) > 30


def test_the_docs_speak_to_users_not_to_the_tracker_or_one_machine():
    """No issue numbers, sessions, one machine's absolute paths or ../shared in what users read."""
    banned = re.compile(r"\bissues? \d+|\bsessions?\b|/root/|/work/|/home/|/tmp/|/mnt/|/Users/|\.\./shared"
                        r"|our CI machine", re.I)
    texts = {str(path.relative_to(ROOT)): path.read_text()
             for path in ALL_DOCS + sorted((ROOT / "docs").rglob("report.md")) + [ROOT / "recipes" / "scale_correlation.py"]}
    found = {name: banned.findall(text) for name, text in texts.items() if banned.search(text)}
    assert not found, found


def test_the_readme_cites_the_paper_and_the_license_is_there():
    readme = (ROOT / "README.md").read_text()
    assert "https://arxiv.org/abs/2306.04940" in readme and "Kihyuk Yoon" in readme and "Chiehyeon Lim" in readme
    assert "@misc{yoon2023layeract," in readme and "eprint        = {2306.04940}" in readme
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the layeract-patch authors" in license_text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_the_docs_pages_run_in_the_readmes_order():
    """Every docs/*.md page is in the chain, in the order the README's "Where next" table lists them: a new page is
    placed in the order (and so in the chain) before this test passes."""
    assert sorted(path.name for path in (ROOT / "docs").glob("*.md")) == sorted(DOC_ORDER)
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Where next"):readme.index("\n## ", readme.index("## Where next") + 1)]
    assert tuple(re.findall(r"^\| \[[^]]+\]\(docs/([\w.]+)\)", table, flags=re.M)) == DOC_ORDER


def test_every_user_doc_command_is_run_or_says_why_not():
    commands = [command for path in USER_DOCS for command in doc_commands(path)]
    assert set(NOT_RUN) <= set(commands), f"NOT_RUN names commands the docs no longer have: {set(NOT_RUN) - set(commands)}"
    for command in commands:
        if command not in NOT_RUN:
            assert script_of(command) in TINY, f"no tiny form for {command!r}: add its script to TINY"


def test_printed_commands_work_from_where_they_are_printed(tmp_path, monkeypatch):
    from layeract_patch.training.command import python_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    assert python_command() == ".venv/bin/python"  # under the working folder: relative, never a bare name
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert python_command() == "./python"
    monkeypatch.chdir(tmp_path / ".venv")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "my env" / "python"))
    assert python_command() == shlex.quote(str(tmp_path / "my env" / "python"))  # elsewhere: absolute, quoted


def test_the_demo_docstring_names_its_own_defaults():
    from layeract_patch import demo

    named = dict(re.findall(r"\[--([\w-]+) (\S+)\]", demo.__doc__))
    defaults = vars(demo.get_args_parser().parse_args([]))
    assert named and all(str(defaults[flag.replace("-", "_")]) == value for flag, value in named.items()), named


def recipe_parsers():
    import importlib.util

    for script in sorted((ROOT / "recipes").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"recipe_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield script.name, module.get_args_parser()


def test_help_states_each_default_once_and_eval_corruptions_explains_every_flag():
    import argparse

    for name, parser in recipe_parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            text = formatter._expand_help(action) if action.help else ""
            assert text.count("default:") <= 1, (name, action.option_strings, text)
            if name == "eval_corruptions.py" and not isinstance(action, argparse._HelpAction):
                assert text, (name, action.option_strings)


# ---- the chain --------------------------------------------------------------------------------------------------

def make_mnist_root(root: Path, count: int = 20) -> Path:
    """root/MNIST/raw/*-ubyte as torchvision reads them: tiny 28x28 digits of two classes."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        labels = np.arange(count, dtype=np.uint8) % 2
        images = np.stack([class_image(rng, int(c), size=28, channels=1) for c in labels])
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, count) + labels.tobytes())
    return root


def newcomer_folder(root: Path) -> Path:
    """A folder laid out as the repository root after the set-up commands: recipes/, benchmarks/, .venv/bin/ (this
    Python, whatever its path), and the data the docs download or the user brings (module docstring)."""
    root.mkdir(parents=True)
    for name in ("recipes", "benchmarks"):
        (root / name).symlink_to(ROOT / name)
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    python = shlex.quote(sys.executable)
    for name, run in (("python", python), ("torchrun", f"{python} -m torch.distributed.run")):
        (venv / name).write_text(f'#!/bin/sh\nexec {run} "$@"\n')
        (venv / name).chmod(0o755)
    make_imagefolder(root / "data", classes=10, per_class=(15, 3))  # batch 128 of the cpu preset fits 135
    make_mnist_root(root / "data" / "mnist")
    make_imagefolder(root / "DIR", classes=3, per_class=(4, 2))
    (root / "DIR" / "test").rename(root / "DIR" / "val")
    import timm
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), root / "mobilenet_v3_small.pth")
    torch.save(timm.create_model("resnet18").state_dict(), root / "resnet18.pth")
    return root


def fresh_shell_env() -> dict:
    """The environment of a new terminal: no VIRTUAL_ENV, no venv on PATH; one thread; this checkout importable."""
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    return dict(env, PATH=path, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


@pytest.mark.slow
def test_every_doc_command_runs_in_order_at_a_tiny_size(tmp_path):
    folder = newcomer_folder(tmp_path / "repo")
    env = fresh_shell_env()
    transcript = []
    commands = [command for path in USER_DOCS for command in doc_commands(path) if command not in NOT_RUN]
    for command in commands:
        ran = tiny(command)
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", ran], cwd=folder, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600)
        seconds = time.perf_counter() - start
        transcript.append(f"$ {ran}\n  [{seconds:.1f} s, exit {done.returncode}] "
                          + (done.stdout.strip().splitlines() or [""])[-1][:200])
        assert done.returncode == 0 and "Traceback" not in done.stderr, \
            f"{command!r} ran as {ran!r}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        if script_of(command) == "layeract_patch.demo":  # the demo names the next command: it works as printed
            following = done.stdout.strip().splitlines()[-1].split("Next: ", 1)[1]
            assert subprocess.run(["bash", "-c", following], cwd=folder, env=env, capture_output=True,
                                  text=True).returncode == 0, following
    print("\n".join(transcript))
    # the chain held: the corruption evaluation read the quick try's model, the report the study's runs
    assert (folder / "runs" / "r20_la_silu_c" / "results.json").is_file()
    report = (folder / "runs" / "study_cpu" / "report.md").read_text()
    assert "Robustness" in report and "bf16 autocast" in report
