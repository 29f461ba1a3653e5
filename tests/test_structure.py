"""The package's shape: imports only point down the layers, setup.cfg installs every package, and the
CLI imports a command's module only when that command runs.

Everything here reads the source tree (``ast``, ``configparser``) or runs a fresh interpreter, so it
needs no optional dependency and no network.
"""
from __future__ import annotations

import ast
import configparser
import fnmatch
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def _config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _package_dirs() -> dict[str, pathlib.Path]:
    """setup.cfg's ``package_dir``: installed package name -> folder (refcert.backends = backends, ...)."""
    mapping = {}
    for line in _lines(_config()["options"]["package_dir"]):
        name, folder = (part.strip() for part in line.split("=", 1))
        mapping[name] = REPO / folder
    return mapping


def _installed_name(path: pathlib.Path, roots: dict[str, pathlib.Path]) -> str | None:
    """The dotted name a file or package folder under one of the roots is installed as (None: outside)."""
    for name, folder in sorted(roots.items(), key=lambda item: -len(item[0])):  # refcert.backends before refcert
        try:
            relative = path.relative_to(folder)
        except ValueError:
            continue
        parts = list(relative.with_suffix("").parts) if path.suffix == ".py" else list(relative.parts)
        if parts and parts[-1] == "__init__":
            parts.pop()
        return ".".join([name] + parts)
    return None


def _modules() -> dict[str, pathlib.Path]:
    """Every module of the installed package: dotted name -> file (a package's name -> its __init__.py)."""
    roots = _package_dirs()
    modules = {}
    for folder in roots.values():
        for path in sorted(folder.rglob("*.py")):
            folders = [f for f in (path.parent, *path.parent.parents) if f == folder or folder in f.parents]
            if all((f / "__init__.py").exists() for f in folders):  # inside packages all the way down
                modules[_installed_name(path, roots)] = path
    return modules


def imports(name: str, source: str, modules, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module among ``modules``, line) for every import in module ``name``'s source: module level
    or inside functions, absolute or relative; ``from P import x`` imports P.x when that is a module, else
    P; ``importlib.import_module("literal")`` counts too.  Imports of the module's own ancestor packages
    are left out: a package's __init__ runs before its modules and imports them by nature, so a module
    importing its parent is not a layer pointing up."""
    package = name if is_package else name.rpartition(".")[0]
    found = []

    def add(target: str, line: int):
        while target and target not in modules:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target:
            found.append((target, line))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base, node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value, node.lineno)
    return [(target, line) for target, line in found
            if target != name and not name.startswith(target + ".")]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported refcert module: first line importing it}."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = {}
        for target, line in imports(name, path.read_text(), modules, path.name == "__init__.py"):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def tied_groups(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components with a cycle: modules that all import one another, directly or not."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm; ~100 modules, so recursion depth is no concern
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while node not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1 or node in graph.get(node, {}):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """For each tied group, a shortest cycle through its first module (that module repeated at the end)."""
    cycles = []
    for group in tied_groups(graph):
        start = min(group)
        paths, frontier = {start: [start]}, [start]
        while not any(start in graph[node] for node in frontier):  # breadth first, inside the group
            following = []
            for node in frontier:
                for target in sorted(graph[node]):
                    if target in group and target not in paths:
                        paths[target] = paths[node] + [target]
                        following.append(target)
            frontier = following
        last = next(node for node in frontier if start in graph[node])
        cycles.append(paths[last] + [start])
    return sorted(cycles)


def _describe(cycle: list[str], graph) -> str:
    modules = _modules()
    return "\n".join(f"  {modules[a].relative_to(REPO)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:]))


def test_import_graph_sees_the_package():
    graph = import_graph()
    assert {"refcert", "refcert.autodiff", "refcert.backends", "refcert.datasets", "refcert.domains.line",
            "refcert.fuzz.runner", "refcert.commands.info"} <= set(graph)
    assert "refcert.autodiff" in graph["refcert.domains.point"]          # from refcert import autodiff as ad
    assert "refcert.backends" in graph["refcert.autodiff_core"]          # a package installed from backends/
    assert "refcert.domains" not in graph["refcert.domains.point"]       # its own parent: left out
    assert "refcert.domains.point" in graph["refcert.domains"]           # imported inside a function


def test_imports_resolves_every_form():
    modules = {"p", "p.a", "p.b", "p.q", "p.q.c", "p.q.d", "x"}
    source = """
import p.a
from p import b, NAME
from . import c as renamed
from .d import thing
from .. import a
from ..b import other
import os
def later():
    from p.q.c import f
    importlib.import_module("p.b")
"""
    found = imports("p.q.d", source, modules)
    assert {target for target, _ in found} == {"p.a", "p.b", "p.q.c"}  # p (from p import NAME) is an ancestor
    assert ("p.q.c", 4) in found and ("p.q.c", 10) in found and ("p.b", 11) in found
    assert {t for t, _ in imports("p.q", "from . import c\nfrom .. import b\nfrom p import x", modules, True)} == \
        {"p.q.c", "p.b"}


def test_find_cycles_reports_a_planted_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    """Imports point down the layers: no cycle, counting imports inside functions too (a lazy import
    that closes a cycle still ties the two modules into one layer)."""
    graph = import_graph()
    cycles = find_cycles(graph)
    groups = {min(group): sorted(group) for group in tied_groups(graph)}
    report = "\n".join(f"{' -> '.join(c)}  (tied together: {', '.join(groups[c[0]])})\n{_describe(c, graph)}"
                       for c in cycles)
    assert not cycles, f"import cycles among refcert modules:\n{report}"


# --- setup.cfg installs every package ---------------------------------------------------------------

def test_setup_cfg_lists_every_package():
    """A package missing from ``[options] packages`` is silently left out of ``pip install .`` (refcert.fuzz
    once was: the installed ``refcert`` command failed with No module named 'refcert.fuzz')."""
    roots = _package_dirs()
    declared = set(_lines(_config()["options"]["packages"]))
    found = {_installed_name(init.parent, roots) for folder in roots.values() for init in folder.rglob("__init__.py")
             if "__pycache__" not in init.parts}
    assert {"refcert", "refcert.fuzz", "refcert.backends", "refcert.datasets"} <= found
    assert not found - declared, f"packages missing from setup.cfg [options] packages: {sorted(found - declared)}"
    assert not declared - found, f"setup.cfg lists packages that do not exist: {sorted(declared - found)}"


def test_setup_cfg_ships_the_data_files():
    """Every non-Python file under datasets/ matches a ``[options.package_data]`` glob of refcert.datasets."""
    folder = _package_dirs()["refcert.datasets"]
    globs = [g.strip() for g in _config()["options.package_data"]["refcert.datasets"].split(",") if g.strip()]
    data = [path.relative_to(folder).as_posix() for path in folder.rglob("*")
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts]
    assert any(name.endswith(".npz") for name in data) and "weights/manifest.json" in data
    unshipped = [name for name in data  # a glob's * stays inside one folder, as in setuptools
                 if not any(fnmatch.fnmatchcase(name, g) and name.count("/") == g.count("/") for g in globs)]
    assert not unshipped, f"data files not covered by setup.cfg package_data {globs}: {unshipped}"


# --- the CLI imports only the command it runs ---------------------------------------------------------

def _command_modules_after(argv: list[str]) -> tuple[int, list[str]]:
    """Run refcert.cli.main(argv) in a fresh interpreter; (exit code, refcert.commands.* modules imported)."""
    code = ("import sys, refcert.cli\n"
            "try:\n"
            f"    code = refcert.cli.main({argv!r})\n"
            "except SystemExit as exit:\n"
            "    code = exit.code\n"
            "print(code)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('refcert.commands.'))))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return int(lines[-2]), lines[-1].split()


def test_cli_help_imports_no_command():
    code, imported = _command_modules_after(["--help"])
    assert code == 0
    assert imported == []


def test_cli_info_imports_only_its_command():
    code, imported = _command_modules_after(["info"])
    assert code == 0
    assert imported == ["refcert.commands.info"]


# --- the layers of docs/ARCHITECTURE.md ---------------------------------------------------------------

def documented_layers() -> dict[str, int]:
    """refcert module or package -> its layer, from the table in docs/ARCHITECTURE.md ("| N | `a`, `b/*` ...")."""
    import re
    layers = {}
    for line in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for token in re.findall(r"`([a-z_/*]+)`", cells[1]):
                layers["refcert." + token.rstrip("*").rstrip("/").replace("/", ".")] = int(cells[0])
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of the longest documented name that is ``module`` or one of its packages."""
    for name in sorted(layers, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return layers[name]
    return None


def layer_violations(graph, layers) -> list[str]:
    """Modules missing from the table, and imports that point up it."""
    problems = []
    for module, edges in sorted(graph.items()):
        if module == "refcert":  # the package's __init__ re-exports the public names of every layer
            continue
        mine = layer_of(module, layers)
        if mine is None:
            problems.append(f"{module} is in no layer of docs/ARCHITECTURE.md")
            continue
        for target, line in edges.items():
            theirs = layer_of(target, layers)
            if target != "refcert" and theirs is not None and theirs > mine:
                problems.append(f"{module} (layer {mine}) imports {target} (layer {theirs}) at line {line}")
    return problems


def test_layer_check_catches_a_planted_upward_import():
    layers = {"refcert.a": 0, "refcert.b": 1}
    assert layer_violations({"refcert.a": {"refcert.b": 3}, "refcert.b": {"refcert.a": 1}}, layers) == \
        ["refcert.a (layer 0) imports refcert.b (layer 1) at line 3"]
    assert layer_violations({"refcert.c": {}}, layers) == ["refcert.c is in no layer of docs/ARCHITECTURE.md"]


def test_imports_point_down_the_documented_layers():
    """Every module is in the table of docs/ARCHITECTURE.md and imports only its own layer or lower ones."""
    layers = documented_layers()
    assert layers["refcert.autodiff_core"] == 1 and layers["refcert.commands"] == 7
    problems = layer_violations(import_graph(), layers)
    assert not problems, "\n".join(problems)


def test_the_default_output_folders_are_ignored_by_git():
    """`refcert demo` and `refcert train` write into ./demo-out and ./run by default; a user running them in
    a clone must not see them as untracked files (demo-out/ was not ignored)."""
    from refcert import cli
    ignored = set(_lines((REPO / ".gitignore").read_text()))
    for command in ("demo", "train"):
        parser = cli.build_parser(command)
        out = parser.parse_args([command]).out
        assert {f"{out}/", f"/{out}/"} & ignored, f"refcert {command}'s default --out {out!r} is not in .gitignore"
