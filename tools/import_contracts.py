"""import-linter contract types of this repository (``.importlinter`` names them under ``contract_types``).

``private_names``: no module uses another module's private names -- ``from x import _name``, or ``x._name`` where
``x`` is an imported module of the checked packages. A private name is one with a leading underscore that is not a
dunder (``__version__`` is public). A module may use its own private names, and a package's ``__init__`` those of
its own submodules is NOT an exception: a name another module needs is made public where it is defined.
"""

from __future__ import annotations

import ast
import importlib.util
import os

from importlinter import Contract, ContractCheck, fields, output


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root_dirs(graph, packages):
    """{root package: its folder}, found without importing anything."""
    roots = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"private_names: package {package} not found")
        roots[package] = list(spec.submodule_search_locations)[0]
    return roots


def source_path(module: str, roots: dict) -> tuple[str, bool]:
    """(path of ``module``'s source, whether it is a package's ``__init__``)."""
    root, *parts = module.split(".")
    base = os.path.join(roots[root], *parts)
    init = os.path.join(base, "__init__.py")
    if os.path.isfile(init):
        return init, True
    return base + ".py", False


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(module: str, tree: ast.AST, is_package: bool, modules: set) -> list[tuple[int, str]]:
    """(line, ``other._name``) for every private name of another checked module that ``module`` uses."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in modules:
                    aliases[alias.asname or alias.name] = full
                elif source in modules and source != module and is_private(alias.name):
                    found.append((node.lineno, f"{source}.{alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            target = _module_named(node.value, aliases)
            if target in modules and target != module:
                found.append((node.lineno, f"{target}.{node.attr}"))
    return sorted(set(found))


def _module_named(node: ast.AST, aliases: dict):
    """The module an expression such as ``sweep`` or ``remop_usb.experiments.sweep`` names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id]] + parts[::-1])


class PrivateNamesContract(Contract):
    """No module of ``packages`` imports or uses a private name of another of their modules.

    Options: ``packages`` (the root packages to check; default: every root package of the graph).
    """

    type_name = "private_names"

    packages = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph, verbose: bool) -> ContractCheck:
        modules = set(graph.modules)
        packages = list(self.packages or sorted({m.split(".")[0] for m in modules}))
        roots = _root_dirs(graph, packages)
        violations = []
        for module in sorted(m for m in modules if m.split(".")[0] in roots):
            path, is_package = source_path(module, roots)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            violations += [(module, line, name) for line, name in private_uses(module, tree, is_package, modules)]
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print_error("Private names used from another module (make them public where they are defined):",
                           bold=False)
        output.new_line()
        for module, line, name in check.metadata["violations"]:
            output.print_error(f"- {module} (l.{line}) uses {name}", bold=False)
        output.new_line()
