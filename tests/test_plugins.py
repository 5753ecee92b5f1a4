"""A CISSL algorithm defined outside this repository, trained through `plugins:` without touching our code."""

import json
import os
import sys
import textwrap

from conftest import train_argv
from remop_usb.launch import main

PLUGIN = textwrap.dedent('''
    """A toy imbalanced algorithm: the base learner's loss plus a logit-norm penalty on the labeled batch."""
    from semilearn.algorithms.utils import SSL_Argument
    from semilearn.core import ImbAlgorithmBase
    from semilearn.core.utils import IMB_ALGORITHMS

    CALLS = []


    @IMB_ALGORITHMS.register("toy_lognorm")
    class ToyLogNorm(ImbAlgorithmBase):
        def __init__(self, args, **kwargs):
            self.penalty = args.toy_penalty
            super().__init__(args, **kwargs)

        def process_batch(self, **kwargs):
            from inspect import signature
            return super().process_batch(input_args=list(signature(super().train_step).parameters), **kwargs)

        def train_step(self, *args, **kwargs):
            out, log = super().train_step(*args, **kwargs)
            out["loss"] = out["loss"] + self.penalty * out["feat"]["x_lb"].pow(2).mean()
            CALLS.append(self.it)
            return out, log

        @staticmethod
        def get_argument():
            return [SSL_Argument("--toy_penalty", float, 0.0)]
''')


def test_an_external_module_registers_and_trains(tiny_rafdb, tmp_path, monkeypatch):
    (tmp_path / "my_cissl_pkg.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "toy.yaml"
    base = open(os.path.join(os.path.dirname(__file__), "..", "config", "demo", "fixmatch.yaml")).read()
    base = base.replace("imb_algorithm: None", "imb_algorithm: toy_lognorm")
    cfg.write_text(base + "\nplugins: [my_cissl_pkg]\ntoy_penalty: 0.01\n")
    argv = train_argv(tiny_rafdb, tmp_path / "runs", save_name="toy", num_train_iter=3, num_eval_iter=3)
    argv[1] = str(cfg)
    assert main(argv) == 0
    assert sys.modules["my_cissl_pkg"].CALLS == [0, 1, 2]  # our train_step ran inside USB's loop
    with open(tmp_path / "runs" / "toy" / "results.json") as f:
        assert json.load(f)["imb_algorithm"] == "toy_lognorm"


def test_a_missing_plugin_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins: [no_such_module_here]\n")
    assert main(["--c", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == ("error: plugins: cannot import 'no_such_module_here': "
                                               "No module named 'no_such_module_here'")
