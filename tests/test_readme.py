"""The README's two set-up commands are the ones CI runs, and every Python example of the docs runs: the README's
and those of every docs/*.md page (docs/results/ holds evidence, not examples)."""
import re
import warnings
from pathlib import Path

import pytest

from layeract_patch import unregister_timm_activations

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_blocks(path, lang):
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def readme_blocks(lang):
    return doc_blocks(ROOT / "README.md", lang)


def test_ci_runs_the_readme_commands():
    """CI starts with the README's two set-up commands, word for word, then runs the tests whose outcome depends
    on the optional matplotlib again with it installed: the suite must pass with and without it."""
    ci_commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                   if line.startswith((".venv/", "python3 -m venv"))]
    setup = [block.strip() for block in readme_blocks("bash")[:2]]
    assert ci_commands[:2] == setup, "the README's set-up commands must be CI's first two, word for word"
    assert ci_commands[2:] == [".venv/bin/pip install matplotlib", ".venv/bin/python -m pytest -q -m matplotlib"]


def test_the_readme_and_the_docs_have_python_examples():
    assert readme_blocks("python"), "the README shows its examples"
    assert len(DOCS) > 1 and any(doc_blocks(path, "python") for path in DOCS[1:]), "docs/*.md pages are read"


@pytest.mark.parametrize("path", [path for path in DOCS if doc_blocks(path, "python")],
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_doc_python_examples_run(path):
    """Each ```python block of the page runs, in order, each in a fresh namespace."""
    name = str(path.relative_to(ROOT))
    try:
        for block in doc_blocks(path, "python"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(block, name, "exec"), {"__name__": "readme_example"})
    finally:
        unregister_timm_activations()  # the examples register LayerAct's names in timm; leave timm as it was
