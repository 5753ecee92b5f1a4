"""The architecture holds (docs/architecture.md): `lint-imports` keeps every contract of .importlinter -- the layers,
no import circle, the independent modules, no private name used across modules."""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint_imports():
    beside = os.path.join(os.path.dirname(sys.executable), "lint-imports")  # the venv's, as CI installs it
    return beside if os.path.exists(beside) else shutil.which("lint-imports")


def test_lint_imports_keeps_every_contract():
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _contracts():
    path = os.path.join(REPO, "tools", "import_contracts.py")
    spec = importlib.util.spec_from_file_location("import_contracts_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _uses(source, module="pkg.a", is_package=False):
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    return [name for _, name in _contracts().private_uses(module, ast.parse(source), is_package, modules)]


def test_private_names_check_finds_imports_and_attribute_uses():
    assert _uses("from .b import _helper, public") == ["pkg.b._helper"]
    assert _uses("from pkg.sub.c import _x as y") == ["pkg.sub.c._x"]
    assert _uses("from . import b\nb._line()") == ["pkg.b._line"]
    assert _uses("import pkg.sub.c\npkg.sub.c._y") == ["pkg.sub.c._y"]
    assert _uses("import pkg.b as bee\nbee._z") == ["pkg.b._z"]
    assert _uses("from ..b import _h", module="pkg.sub.c") == ["pkg.b._h"]
    assert _uses("from .c import _h", module="pkg.sub", is_package=True) == ["pkg.sub.c._h"]


def test_private_names_check_lets_alone_own_dunder_and_outside_names():
    assert _uses("def _own():\n    pass\n_own()\nfrom . import a\na._own") == []  # a module's own names
    assert _uses("from .b import __version__, public") == []
    assert _uses("from os.path import _joinrealpath\nimport torch\ntorch._C") == []  # outside the packages
    assert _uses("from . import b\nx = object()\nx._attr") == []  # not a module of the packages
