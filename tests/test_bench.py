"""The benchmark command runs and reports consistent figures (no timing is asserted: benchmarks are not tests)."""

import functools
import json
import os
from types import SimpleNamespace

import pytest
import torch

from remop_usb.experiments import bench
from remop_usb.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_json(capsys):
    argv = ["bench", "--device", "cpu", "--json", "--img_size", "32", "--batch_size", "4", "--steps", "1",
            "--warmup", "1", "--batches", "1", "--loader_batches", "1", "--num_images", "140", "--num_workers", "0"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["img_size"] == 32 and out["batch_size"] == 4
    for key in ("fixmatch_step_s", "remop_fixmatch_step_s", "plain_fixmatch_step_s", "peak_memory_mb"):
        assert out[key] > 0
    assert out["remop_over_fixmatch"] == out["remop_fixmatch_step_s"] / out["fixmatch_step_s"]
    assert out["plugin_over_plain"] == out["fixmatch_step_s"] / out["plain_fixmatch_step_s"]
    assert out["loader_images_per_s"]["total"] > 0
    for name, limit in (("remop_over_fixmatch", 1.03), ("plugin_over_plain", 1.10)):
        assert out["targets"][name] == {"value": out[name], "limit": limit, "met": out[name] <= limit}


# -- targets, on crafted figures --------------------------------------------------------------------------------

def test_targets_compare_each_figure_with_its_limit():
    figures = {"remop_over_fixmatch": 1.03, "plugin_over_plain": 1.1001, "options_speedup": 9.0}
    assert bench.targets(figures) == {
        "remop_over_fixmatch": {"value": 1.03, "limit": 1.03, "met": True},  # at the limit: met
        "plugin_over_plain": {"value": 1.1001, "limit": 1.10, "met": False},
    }
    assert bench.targets({"remop_over_fixmatch": 0.98}) == {
        "remop_over_fixmatch": {"value": 0.98, "limit": 1.03, "met": True}}


@pytest.fixture
def crafted_bench(monkeypatch):
    """``remop-usb bench`` returning the figures given instead of measuring."""
    figures = {}
    monkeypatch.setattr(bench, "run_bench", lambda opts: dict(figures))
    return figures


def test_check_exits_1_after_printing_a_missed_target(crafted_bench, capsys):
    crafted_bench.update(device="cpu", remop_over_fixmatch=1.01, plugin_over_plain=1.25)
    assert main(["bench", "--device", "cpu", "--check"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[:4] == ["device                       cpu", "remop_over_fixmatch          1.01",
                         "plugin_over_plain            1.25", "targets"]
    assert lines[4].split() == ["remop_over_fixmatch", "1.01", "<=", "1.03", "met"]
    assert lines[5].split() == ["plugin_over_plain", "1.25", "<=", "1.1", "MISSED"]
    assert captured.err.splitlines() == ["bench: target missed: plugin_over_plain 1.25 > 1.1"]
    assert main(["bench", "--device", "cpu"]) == 0  # without --check a miss is only reported


def test_check_passes_when_every_target_is_met(crafted_bench, capsys):
    crafted_bench.update(remop_over_fixmatch=1.02, plugin_over_plain=1.10)
    assert main(["bench", "--device", "cpu", "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["targets"] == {"remop_over_fixmatch": {"value": 1.02, "limit": 1.03, "met": True},
                              "plugin_over_plain": {"value": 1.10, "limit": 1.10, "met": True}}


# -- configs without the checkout -------------------------------------------------------------------------------

def test_the_bench_configs_are_the_demo_configs(tmp_path):
    from remop_usb.config import read_yaml

    paths = bench.write_configs(str(tmp_path))
    assert sorted(paths) == ["fixmatch", "remop_fixmatch"]
    for method, path in paths.items():
        assert os.path.dirname(path) == str(tmp_path)
        built, _ = read_yaml(path)
        shipped, _ = read_yaml(os.path.join(REPO, "config", "demo", f"{method}.yaml"))
        assert built == shipped
    assert built["imb_algorithm"] == "remop" and built["remop_beta"] == 0.5  # the ReMoP file is the last one


# -- the plain-PyTorch step takes the speed options --------------------------------------------------------------

SEEN_DTYPES = []


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        logits = self.fc(self.conv(x).mean(dim=(2, 3)))
        SEEN_DTYPES.append(logits.dtype)
        return {"logits": logits}


def _args(**kw):
    return SimpleNamespace(**{"lr": 0.01, "amp_dtype": "bf16", "channels_last": False, "compile": False,
                              "compile_mode": "default", "cudnn_benchmark": False, **kw})


def _batches():
    g = torch.Generator().manual_seed(0)
    x = lambda: torch.randn(2, 3, 8, 8, generator=g)  # noqa: E731
    return [({"x_lb": x(), "y_lb": torch.tensor([0, 2])}, {"x_ulb_w": x(), "x_ulb_s": x()})]


def test_plain_network_gets_channels_last_and_compile(monkeypatch):
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, mode=None: modes.append((type(self), mode)))
    net = Tiny()
    plain = bench.plain_network(net, torch.device("cpu"), _args(channels_last=True, compile=True,
                                                                compile_mode="max-autotune"))
    assert modes == [(Tiny, "max-autotune")]
    assert plain.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.conv.weight.is_contiguous(memory_format=torch.channels_last)  # the original is left alone
    assert plain.conv.weight is not net.conv.weight and plain.training
    bench.plain_network(net, torch.device("cpu"), _args())
    assert len(modes) == 1  # no compile without the option


@pytest.mark.parametrize("autocast,dtype", [(None, torch.float32),
                                            (functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16),
                                             torch.bfloat16)])
def test_plain_step_runs_under_the_algorithms_autocast(autocast, dtype):
    SEEN_DTYPES.clear()
    net = Tiny()
    step = bench.plain_fixmatch_step(net, _batches(), torch.device("cpu"), _args(), autocast)
    before = net.fc.weight.clone()
    step(0)
    assert SEEN_DTYPES == [dtype]
    assert torch.equal(net.fc.weight, before)  # the step trains its own copy
