"""A CISSL algorithm defined outside this repository, trained without touching our code: listed under `plugins:`,
or declared by an installed distribution in the `remop_usb.plugins` entry-point group."""

import json
import os
import re
import sys
import textwrap

from conftest import train_argv
from remop_usb.launch import main

PLUGIN = textwrap.dedent('''
    """A toy imbalanced algorithm: the base learner's loss plus a feature-norm penalty on the labeled batch."""
    from semilearn.algorithms.utils import SSL_Argument
    from semilearn.core import ImbAlgorithmBase
    from semilearn.core.utils import IMB_ALGORITHMS

    CALLS = []
    SETUP_CALLS = []


    def setup():
        SETUP_CALLS.append(True)


    @IMB_ALGORITHMS.register(NAME)
    class ToyLogNorm(ImbAlgorithmBase):
        def __init__(self, args, **kwargs):
            self.penalty = args.toy_penalty
            super().__init__(args, **kwargs)

        def train_step(self, *args, **kwargs):
            out, log = super().train_step(*args, **kwargs)
            out["loss"] = out["loss"] + self.penalty * out["feat"]["x_lb"].pow(2).mean()
            CALLS.append(self.it)
            return out, log

        @staticmethod
        def get_argument():
            return [SSL_Argument("--toy_penalty", float, 0.0)]
''')


def _write_plugin(folder, module, name):
    """``folder/module.py`` registering imb_algorithm ``name``."""
    (folder / f"{module}.py").write_text(f"NAME = {name!r}\n" + PLUGIN)


def _write_dist_info(folder, dist, entry_points):
    """An installed distribution as importlib.metadata finds it on sys.path: ``<dist>-0.1.dist-info``."""
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[remop_usb.plugins]\n" + "".join(f"{k} = {v}\n"
                                                                           for k, v in entry_points.items()))


def _toy_argv(data_dir, tmp_path, name, extra_yaml=""):
    """A few-iteration run of FixMatch wrapped by the toy algorithm registered as ``name``."""
    cfg = tmp_path / f"{name}.yaml"
    base = open(os.path.join(os.path.dirname(__file__), "..", "config", "demo", "fixmatch.yaml")).read()
    cfg.write_text(base.replace("imb_algorithm: None", f"imb_algorithm: {name}") + "\ntoy_penalty: 0.01\n"
                   + extra_yaml)
    argv = train_argv(data_dir, tmp_path / "runs", save_name=name, num_train_iter=3, num_eval_iter=3)
    argv[1] = str(cfg)
    return argv


def _trained_with(tmp_path, name):
    with open(tmp_path / "runs" / name / "results.json") as f:
        return json.load(f)["imb_algorithm"]


def test_an_external_module_registers_and_trains(tiny_rafdb, tmp_path, monkeypatch):
    _write_plugin(tmp_path, "my_cissl_pkg", "toy_lognorm")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(_toy_argv(tiny_rafdb, tmp_path, "toy_lognorm", "plugins: [my_cissl_pkg]\n")) == 0
    assert sys.modules["my_cissl_pkg"].CALLS == [0, 1, 2]  # our train_step ran inside USB's loop
    assert _trained_with(tmp_path, "toy_lognorm") == "toy_lognorm"


def test_an_installed_entry_point_registers_and_trains(tiny_rafdb, tmp_path, monkeypatch):
    _write_plugin(tmp_path, "my_ep_pkg", "toy_entry_point")
    _write_dist_info(tmp_path, "my-ep-pkg", {"toy": "my_ep_pkg", "toy_setup": "my_ep_pkg:setup"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "my_ep_pkg" not in sys.modules
    assert main(_toy_argv(tiny_rafdb, tmp_path, "toy_entry_point")) == 0  # no plugins key: found as installed
    plugin = sys.modules["my_ep_pkg"]
    assert plugin.CALLS == [0, 1, 2] and plugin.SETUP_CALLS == [True]  # module imported; module:function called
    assert _trained_with(tmp_path, "toy_entry_point") == "toy_entry_point"


def test_a_broken_entry_point_is_one_line(tmp_path, monkeypatch, capsys):
    _write_dist_info(tmp_path, "broken-pkg", {"oops": "no_such_plugin_module"})
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "c.yaml").write_text("seed: 0\n")
    assert main(["--c", str(tmp_path / "c.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: plugin entry point 'oops = no_such_plugin_module' of broken-pkg (group remop_usb.plugins) cannot be "
        "loaded: No module named 'no_such_plugin_module'")


def test_a_missing_plugin_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins: [no_such_module_here]\n")
    assert main(["--c", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == ("error: plugins: cannot import 'no_such_module_here': "
                                               "No module named 'no_such_module_here'")


def test_the_docs_plugin_example_trains_as_written(tiny_rafdb, tmp_path, monkeypatch):
    """The docs' "Extending without forking" module (docs/extending.md), verbatim, trains through `plugins:` and its
    own key."""
    page = open(os.path.join(os.path.dirname(__file__), "..", "docs", "extending.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(# my_pkg/my_alg.py\n.*?)```", page, re.S).group(1)
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "my_alg.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = train_argv(tiny_rafdb, tmp_path / "runs", config="config/demo/fixmatch.yaml", save_name="my_alg",
                      num_train_iter=2, num_eval_iter=2, plugins="my_pkg.my_alg", imb_algorithm="my_alg",
                      my_penalty=0.05)
    assert main(argv) == 0
    assert _trained_with(tmp_path, "my_alg") == "my_alg"
    with open(tmp_path / "runs" / "my_alg" / "config.json") as f:
        assert json.load(f)["my_penalty"] == 0.05
