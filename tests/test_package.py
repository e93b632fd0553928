"""The package as a whole: light to import, no import cycles in the core."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "layeract_patch"


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_loads_neither_timm_nor_torchvision():
    run = run_python("import sys, layeract_patch\n"
                     "heavy = [m for m in ('timm', 'torchvision') if m in sys.modules]\n"
                     "assert not heavy, heavy\n"
                     "layeract_patch.LASiLU()(__import__('torch').randn(2, 3))\n"
                     "assert 'timm' not in sys.modules\n"
                     "assert callable(layeract_patch.convert_activations)  # loaded on first use")
    assert run.returncode == 0, run.stderr[-3000:]


CORE = ("functional", "catalogue", "modules", "registry", "monitor", "timm_compat", "_kernels",
        "_kernels.layout", "_kernels.op", "_kernels.torch_ops", "_kernels.cpu_kernel", "_kernels.triton_kernel")


def module_level_imports(name):
    """The package modules `layeract_patch.<name>` imports when it is imported (not inside functions)."""
    path = PACKAGE / (name.replace(".", "/") + ("/__init__.py" if (PACKAGE / name.replace(".", "/")).is_dir() else ".py"))
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}".strip(".")
                found.add(sub if sub in CORE else target)
    return {m for m in found if m in CORE}


def test_the_core_has_no_import_cycles_and_functional_is_a_leaf():
    graph = {name: module_level_imports(name) for name in CORE}
    assert graph["functional"] == set()
    assert "_kernels.torch_ops" not in graph["_kernels.layout"]
    assert graph["_kernels.cpu_kernel"].isdisjoint({"_kernels.triton_kernel", "_kernels.op"})
    assert graph["_kernels.triton_kernel"].isdisjoint({"_kernels.cpu_kernel", "_kernels.op"})

    def visit(name, path):
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        for nxt in graph[name]:
            visit(nxt, path + (name,))

    for name in CORE:
        visit(name, ())
