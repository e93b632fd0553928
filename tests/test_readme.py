"""The README's two set-up commands are the ones CI runs, and its usage example runs."""
import re
import warnings
from pathlib import Path

from layeract_patch import unregister_timm_activations

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_commands():
    """CI starts with the README's two set-up commands, word for word, then runs the tests whose outcome depends
    on the optional matplotlib again with it installed: the suite must pass with and without it."""
    ci_commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                   if line.startswith((".venv/", "python3 -m venv"))]
    setup = [block.strip() for block in readme_blocks("bash")[:2]]
    assert ci_commands[:2] == setup, "the README's set-up commands must be CI's first two, word for word"
    assert ci_commands[2:] == [".venv/bin/pip install matplotlib", ".venv/bin/python -m pytest -q -m matplotlib"]


def test_readme_python_examples_run():
    blocks = readme_blocks("python")
    assert blocks
    try:
        for block in blocks:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    finally:
        unregister_timm_activations()  # the examples register LayerAct's names in timm; leave timm as it was
