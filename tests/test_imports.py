"""Every arrow points down: the package's import graph has no circle.

The graph is read from the source with :mod:`ast`: every import statement is an arrow,
one inside a function (it runs, just later) or under ``if TYPE_CHECKING:`` (a type the
module names) as much as one at the top. A submodule's implicit import of its parent
package is not an arrow; ``from agegender.cli import app`` in ``agegender/cli/data.py``
is one (to the package, which imports ``cli.data`` back).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import agegender

SRC = Path(agegender.__file__).resolve().parent


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir``."""
    root = package_dir.parent
    out = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file)."""
    files = module_files(package_dir)
    top = package_dir.name

    def known(name: str) -> str | None:  # the module itself, or the package holding it
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, *([node.module] if node.module else [])])
                for a in node.names:  # a submodule when there is one, else the module
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in files else base)
            for t in targets:
                if t == top or t.startswith(top + "."):
                    target = known(t)
                    if target and target != mod:
                        graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SRC)


def test_the_package_has_no_import_circle(graph) -> None:
    assert len(graph) > 80 and sum(map(len, graph.values())) > 200  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_what_the_outputs_mean_sits_below_the_model_file(graph) -> None:
    """The gender decision, the DEX read-out and the metric names import nothing above
    them; the model file, metrics, training and the predictor import them."""
    assert reaches(graph, "agegender.readout") == {"agegender.data.records"}
    assert reaches(graph, "agegender.metric_names") == set()
    for user in (
        "agegender.artifact",
        "agegender.evaluate.metrics",
        "agegender.models.heads",
        "agegender.infer.predictor",
        "agegender.evaluate.predict_batch",
    ):
        assert "agegender.readout" in graph[user], user
    assert "agegender.metric_names" in graph["agegender.train.module"]
    # the config schema validates against the metric names, not the evaluation package
    below_config = set().union(
        *(reaches(graph, m) for m in graph if m.startswith("agegender.config"))
    )
    assert not {m for m in below_config if m.startswith("agegender.evaluate")}
    assert "agegender.artifact" not in below_config
    # the models never reach back up to the model file
    assert "agegender.artifact" not in reaches(graph, "agegender.models")


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import b\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub.b import g\n    return g\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\ng = 1\n")
    (pkg / "c.py").write_text(
        "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.sub\n"
    )
    g = import_graph(pkg)
    assert g == {
        "pkg": set(),
        "pkg.a": {"pkg.sub.b"},
        "pkg.c": {"pkg.sub"},
        "pkg.sub": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg.a"},
    }
    assert set(find_cycle(g) or []) == {"pkg.a", "pkg.sub.b"}
    (pkg / "sub" / "b.py").write_text("g = 1\n")
    assert find_cycle(import_graph(pkg)) is None
    (pkg / "sub" / "b.py").write_text("if TYPE_CHECKING:\n    from pkg.c import x\n")
    assert set(find_cycle(import_graph(pkg)) or []) == {"pkg.c", "pkg.sub", "pkg.sub.b"}
