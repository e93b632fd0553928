"""The package as a whole: light to import; its imports (lazy ones too) run one way, down the layers."""
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


# The layers of the package, lowest first: a module imports only from its own layer or the ones below
# (the arrows of the design: _math <- _kernels <- functional <- modules <- convert, models <- training
# <- studies). The catalogue is a leaf beside the math: it names activations and imports nothing.
LAYERS = (
    ("_math", "catalogue", "corruptions", "_eval_mode"),  # the formula, the names, the image corruptions, eval mode
    ("_kernels",),                               # the op and its backends (the kernel codes come from the catalogue)
    ("functional",),                             # the public functions: a thin face over the op
    ("modules",),                                # LASiLU, LAHardSiLU, LAGELU
    ("registry", "monitor", "timm_compat"),      # names -> modules, the scale monitor, timm's names
    ("convert", "models"),                       # swapping activations in a model; the paper's models
    ("training",),                               # the one training loop and its configs
    ("studies",),                                # what the paper measures beyond training
    ("__init__", "demo"),                        # the package's face and its demo
)


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name):
    """Every module of the package that `name` imports: at the top, inside functions, anywhere in the file
    (a lazy import still ties two modules together). `from .x import y` counts as x.y when y is a module."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE.name:
                base = node.module
            else:
                continue
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def part(name):
    """The top-level part of the package a module belongs to: `_kernels` for layeract_patch._kernels.op."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name):
    return next(i for i, parts in enumerate(LAYERS) if part(name) in parts)


def test_every_part_of_the_package_has_a_layer():
    named = {p for parts in LAYERS for p in parts}
    assert {part(name) for name in MODULES} == named


def test_the_package_has_no_import_cycle():
    done, path = set(), []

    def visit(name):
        assert name not in path, f"import cycle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        path.append(name)
        for nxt in sorted(GRAPH[name]):
            visit(nxt)
        path.pop()
        done.add(name)

    for name in sorted(MODULES):
        visit(name)


def test_imports_run_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a))
    assert not upward, "imports that climb a layer (see LAYERS):\n" + "\n".join(upward)


def test_the_core_keeps_its_order():
    assert all(part(b) in ("_math",) for b in GRAPH["layeract_patch._math"]), "_math is the leaf"
    assert GRAPH["layeract_patch.catalogue"] == set(), "the catalogue names activations and imports nothing"
    for name in MODULES:
        if part(name) == "_kernels":  # the op and its backends: the math, and the kernel codes of the catalogue
            assert {part(b) for b in GRAPH[name]} <= {"_kernels", "_math", "catalogue"}, (name, GRAPH[name])
    kernels = "layeract_patch._kernels."
    assert kernels + "torch_ops" not in GRAPH[kernels + "layout"]
    assert GRAPH[kernels + "cpu_kernel"].isdisjoint({kernels + "triton_kernel", kernels + "op"})
    assert GRAPH[kernels + "triton_kernel"].isdisjoint({kernels + "cpu_kernel", kernels + "op"})
    assert kernels + "op" in GRAPH["layeract_patch.functional"]


def test_training_never_imports_studies():
    climbing = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                      if part(a) == "training" and part(b) == "studies")
    assert not climbing, climbing
