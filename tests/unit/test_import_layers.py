"""The import graph: no cycle between modules, and no import that runs back up the data path.

Each workspace member (root pyproject.toml, ``tool.uv.workspace.members``) is one distribution
with one import package under ``src/``. A module may import another member's package only if
its distribution declares that member as a dependency, and members are layered in data-path
order (``LAYERS``): a package imports only packages before it. Every import counts, at module
level, inside functions and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# flask_ext -> (queue) -> worker -> (HTTP) -> ingest -> writer, over the shared libraries;
# the command line and the development tools on top.
LAYERS = (
    "cloudlog_core",
    "cloudlog_wire",
    "cloudlog_writer",
    "cloudlog_logging",
    "flask_cloudlog",
    "cloudlog_worker",
    "cloudlog_ingest",
    "cloudlog_cli",
    "cloudlog_devtools",
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return normalise(match.group(0))


@dataclass
class Member:
    distribution: str
    package: str
    src: Path
    dependencies: set[str] = field(default_factory=set)


def workspace_members(root: Path) -> list[Member]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    members = []
    for folder in config["tool"]["uv"]["workspace"]["members"]:
        project = tomllib.loads((root / folder / "pyproject.toml").read_text())["project"]
        packages = [p for p in (root / folder / "src").iterdir() if (p / "__init__.py").exists()]
        assert len(packages) == 1, f"{folder}: one import package under src/, found {packages}"
        members.append(
            Member(
                distribution=normalise(project["name"]),
                package=packages[0].name,
                src=root / folder / "src",
                dependencies={requirement_name(r) for r in project.get("dependencies", [])},
            )
        )
    return members


def module_name(src: Path, path: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """Workspace modules ``module`` (the file at ``path``) imports, submodules resolved."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in known else base for t in targets]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(members: list[Member]) -> dict[str, set[str]]:
    files = {
        module_name(member.src, path): path
        for member in members
        for path in (member.src / member.package).rglob("*.py")
    }
    known = set(files)
    return {module: imported_modules(path, module, known) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_violations(members: list[Member], graph: dict[str, set[str]]) -> list[str]:
    by_package = {member.package: member for member in members}
    problems = []
    for module, targets in sorted(graph.items()):
        source = by_package[module.split(".")[0]]
        for target in sorted(targets):
            other = by_package[target.split(".")[0]]
            if other is source:
                continue
            if other.distribution not in source.dependencies:
                problems.append(
                    f"{module} imports {target}, but {source.distribution} does not depend on "
                    f"{other.distribution}"
                )
            if LAYERS.index(other.package) > LAYERS.index(source.package):
                problems.append(f"{module} imports {target}: an upward import")
    return problems


def test_every_member_is_placed_in_the_layers() -> None:
    assert sorted(m.package for m in workspace_members(ROOT)) == sorted(LAYERS)


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph(workspace_members(ROOT))) == []


def test_no_import_runs_back_up_the_data_path() -> None:
    members = workspace_members(ROOT)
    assert layer_violations(members, import_graph(members)) == []


def write_member(root: Path, folder: str, name: str, package: str, deps: list[str]) -> None:
    (root / folder / "src" / package).mkdir(parents=True)
    (root / folder / "src" / package / "__init__.py").write_text("")
    (root / folder / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\ndependencies = {deps!r}\n'.replace("'", '"')
    )


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["core", "wire"]\n')
    write_member(tmp_path, "core", "cloudlog-core", "cloudlog_core", [])
    write_member(tmp_path, "wire", "cloudlog-wire", "cloudlog_wire", ["cloudlog-core>=0"])
    core = tmp_path / "core" / "src" / "cloudlog_core"
    (core / "a.py").write_text("from cloudlog_core import b\n")
    (core / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
    )
    (core / "c.py").write_text("def f():\n    from cloudlog_wire.w import y\n")
    (tmp_path / "wire" / "src" / "cloudlog_wire" / "w.py").write_text("import cloudlog_core.a\n")
    members = workspace_members(tmp_path)
    graph = import_graph(members)
    assert cycles(graph) == [["cloudlog_core.a", "cloudlog_core.b"]]
    problems = layer_violations(members, graph)
    assert problems == [
        "cloudlog_core.c imports cloudlog_wire.w, but cloudlog-core does not depend on "
        "cloudlog-wire",
        "cloudlog_core.c imports cloudlog_wire.w: an upward import",
    ]


@pytest.mark.parametrize("package", LAYERS)
def test_no_generic_top_level_names(package: str) -> None:
    # Distinctive import names only: never `clients`, `services` or `cloudlog` in a wheel.
    assert package not in {"clients", "services", "cloudlog", "utils", "common"}
