"""InPL (energy-based pseudo-labelling) against values computed by hand, inside USB's real FixMatch step."""

import json
import math
import os

import pytest
import torch

from conftest import build_for, one_batch, restored, train_argv
from remop_usb.algorithms.inpl import (
    MarginalConsistencyLoss,
    ema_class_marginal,
    energy_mask,
    energy_score,
    quantile_cutoff,
)
from remop_usb.config import parse_args
from remop_usb.errors import UserError
from remop_usb.launch import main


def build(data_dir, save_dir, config="config/demo/inpl.yaml", **overrides):
    return build_for(data_dir, save_dir, config=config, **overrides)


@pytest.fixture(scope="module")
def shared_alg(tiny_rafdb, tmp_path_factory):
    return build(tiny_rafdb, tmp_path_factory.mktemp("inpl"))


@pytest.fixture
def alg(shared_alg):
    """The module's algorithm, its weights and attributes (energy cutoff, qhat, ...) put back after each test."""
    with restored(shared_alg):
        yield shared_alg


# -- the equations ---------------------------------------------------------------------------------------------

def test_energy_score_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), math.log(3), math.log(5)]])
    # -logsumexp: -ln 3 ; -ln(2 + 3 + 5) = -ln 10
    assert torch.allclose(energy_score(logits), torch.tensor([-math.log(3), -math.log(10)]))
    # T = 2: -2 ln(sqrt2 + sqrt3 + sqrt5) = -2 ln 5.382332
    expected = -2 * math.log(math.sqrt(2) + math.sqrt(3) + math.sqrt(5))
    assert energy_score(logits[1:], temperature=2.0).item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(-3.36624, abs=1e-5)


def test_energy_mask_is_not_the_confidence_mask():
    logits = torch.tensor([
        [10.0, 0.0, 0.0],  # E = -ln(e^10 + 2) = -10.00009            conf 0.9999 -> kept by both
        [0.0, 0.0, 0.0],   # E = -ln 3 = -1.0986                      conf 1/3    -> kept by neither
        [5.0, 5.0, 0.0],   # E = -(5 + ln 2 + ln(1 + e^-5 / 2)) = -5.6965, conf 0.4983 -> kept by energy only
        [3.0, -1.0, -1.0],  # E = -ln(e^3 + 2/e) = -3.0360,           conf 0.9647 -> kept by confidence only
    ])
    assert energy_score(logits)[2].item() == pytest.approx(-math.log(2 * math.exp(5) + 1), abs=1e-5)
    assert energy_score(logits)[3].item() == pytest.approx(-math.log(math.exp(3) + 2 / math.e), abs=1e-5)
    assert energy_mask(logits, cutoff=-5.5).tolist() == [1.0, 0.0, 1.0, 0.0]
    conf = torch.softmax(logits, dim=1).max(dim=1).values
    assert (conf >= 0.95).float().tolist() == [1.0, 0.0, 0.0, 1.0]
    # E <= cutoff: a sample exactly at the cutoff is kept
    assert energy_mask(logits[1:2], cutoff=energy_score(logits[1:2]).item()).item() == 1.0


def test_quantile_cutoff_by_hand():
    energies = torch.tensor([-1.0, -3.0, -5.0, -2.0, -4.0])  # sorted: -5 -4 -3 -2 -1
    assert quantile_cutoff(energies, 0.5) == pytest.approx(-3.0)
    assert quantile_cutoff(energies, 0.25) == pytest.approx(-4.0)
    assert quantile_cutoff(energies, 0.1) == pytest.approx(-4.6)  # 0.4 of the way from -5 to -4
    assert int((energies <= quantile_cutoff(energies, 0.5)).sum()) == 3  # -5, -4, -3: the median included
    with pytest.raises(ValueError):
        quantile_cutoff(energies, 1.5)


def test_class_marginal_ema_and_marginal_loss_by_hand():
    qhat = ema_class_marginal(torch.tensor([0.5, 0.5]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0],
                                                                      [1.0, 0.0]]), 0.9)
    assert torch.allclose(qhat, torch.tensor([0.525, 0.475]))  # 0.9 * 0.5 + 0.1 * [0.75, 0.25]

    class Holder:
        marginal_tau = 0.5
        qhat = torch.tensor([0.8, 0.2])

    loss = MarginalConsistencyLoss(Holder())
    # logits 0 + 0.5 * log q = log sqrt(q): softmax = [sqrt .8, sqrt .2] / (sqrt .8 + sqrt .2) = [2/3, 1/3]
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(3), abs=1e-6)
    assert loss(torch.zeros(2, 2), torch.tensor([1, 0]), mask=torch.tensor([1.0, 0.0])).item() == pytest.approx(
        math.log(3) / 2, abs=1e-6)  # masked, then the mean over the batch (FixMatch's reduction)


# -- inside USB's FixMatch step --------------------------------------------------------------------------------

def _weak_logits_of_step(algorithm, batch):
    """Run one train step; return (out, log, weak logits as the model produced them, the mask FixMatch used)."""
    seen = {}

    def grab(module, inputs, output):
        seen["logits"] = output["logits"].detach().clone()

    def spy(fn_name, hook_name=None, *args, **kwargs):
        result = original(fn_name, hook_name, *args, **kwargs)
        if hook_name == "MaskingHook":
            seen["mask"] = result.clone()
        return result

    handle = algorithm.model.register_forward_hook(grab)
    original = algorithm.call_hook
    algorithm.call_hook = spy
    try:
        out, log = algorithm.train_step(**batch)
    finally:
        handle.remove()
        del algorithm.call_hook
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    return out, log, seen["logits"][n_lb:n_lb + n_ulb], seen["mask"]


def test_fixmatch_uses_the_energy_mask_of_the_weak_view(alg, monkeypatch):
    batch = one_batch(alg)
    torch.manual_seed(0)
    _, _, weak, _ = _weak_logits_of_step(alg, batch)
    energies = -torch.logsumexp(weak, dim=1)
    monkeypatch.setattr(alg, "energy_cutoff", energies.median().item())  # about half of this batch below it
    torch.manual_seed(0)  # same dropout masks: the same weak logits again
    out, log, weak2, mask = _weak_logits_of_step(alg, batch)
    assert torch.allclose(weak2, weak, atol=1e-5)
    expected = (-torch.logsumexp(weak2, dim=1) <= alg.energy_cutoff).float()
    assert 0 < expected.sum() < expected.numel()
    assert torch.equal(mask, expected)
    assert log["train/inpl_mask"] == pytest.approx(expected.mean().item())
    assert log["train/inpl_energy"] == pytest.approx(energies.mean().item(), abs=1e-4)
    assert torch.isfinite(out["loss"])


def test_nothing_below_the_cutoff_gives_a_finite_loss_and_qhat_moves(alg, monkeypatch):
    monkeypatch.setattr(alg, "energy_cutoff", -1e9)
    before = alg.qhat.clone()
    out, log = alg.train_step(**one_batch(alg))
    assert log["train/inpl_mask"] == 0.0 and log["train/unsup_loss"] == 0.0
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in alg.model.parameters() if p.grad is not None)
    assert not torch.equal(alg.qhat, before) and alg.qhat.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_qhat_is_saved_and_restored(alg, tmp_path, monkeypatch):
    monkeypatch.setattr(alg, "qhat", torch.tensor([0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]))
    monkeypatch.setattr(alg, "epoch", 0, raising=False)  # set by train(); saving needs it
    alg.save_model("ckpt.pth", str(tmp_path))
    alg.qhat = torch.full((7,), 1 / 7)
    alg.load_model(os.path.join(tmp_path, "ckpt.pth"))
    assert torch.allclose(alg.qhat, torch.tensor([0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]))


def test_marginal_loss_option_installs_the_adjusted_consistency_loss(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path, inpl_marginal_loss=True, inpl_marginal_tau=1.0)
    assert isinstance(alg.consistency_loss, MarginalConsistencyLoss) and alg.marginal_tau == 1.0


def test_inpl_needs_fixmatch(tiny_rafdb, tmp_path):
    with pytest.raises(UserError, match="inpl.*fixmatch"):
        build(tiny_rafdb, tmp_path, config="config/demo/supervised.yaml", imb_algorithm="inpl")


def test_train_py_writes_results_on_the_shared_split(tiny_rafdb, tmp_path, demo_split_sha256):
    assert main(train_argv(tiny_rafdb, tmp_path, config="config/demo/inpl.yaml", save_name="inpl", num_train_iter=1,
                           num_eval_iter=1)) == 0
    with open(os.path.join(tmp_path, "inpl", "results.json")) as f:
        res = json.load(f)
    assert (res["algorithm"], res["imb_algorithm"], res["primary_head"]) == ("fixmatch", "inpl", "linear")
    assert res["split_sha256"] == demo_split_sha256  # the split every other algorithm gets with the same keys
    log = open(os.path.join(tmp_path, "inpl", "log.txt")).read()
    assert "train/inpl_mask" in log


def test_labeled_energy_cutoff_is_a_quantile_of_the_labeled_images_energies(alg):
    from datasets_fer.transforms import eval_transform
    from remop_usb.algorithms.inpl import labeled_energy_cutoff

    dataset = alg.dataset_dict["train_lb"]
    weak = dataset.transform
    dataset.transform = eval_transform(32)  # deterministic images, to recompute the energies by hand
    try:
        cutoff = labeled_energy_cutoff(alg, 0.25)
        model = alg.ema_model.eval()
        with torch.no_grad():
            images = torch.stack([dataset[i]["x_lb"] for i in range(len(dataset))])
            energies = -torch.logsumexp(model(images)["logits"], dim=1)
        model.train()
    finally:
        dataset.transform = weak
    assert len(energies) == 56
    assert cutoff == pytest.approx(torch.quantile(energies.double(), 0.25).item(), abs=1e-4)
    assert int((energies <= cutoff + 1e-6).sum()) == 14  # a quarter of the 56 labeled images at or below it


def test_demo_config_uses_the_measured_default(tiny_rafdb, tmp_path):
    from remop_usb.algorithms.inpl import DEFAULT_ENERGY_CUTOFF

    args = parse_args(train_argv(tiny_rafdb, tmp_path, config="config/demo/inpl.yaml"))
    assert args.inpl_energy_cutoff == DEFAULT_ENERGY_CUTOFF == -4.6
    assert (args.inpl_marginal_loss, args.inpl_temperature) == (False, 1.0)


def test_cutoff_command_measures_the_labeled_quantile_of_a_checkpoint(tiny_rafdb, tmp_path, capsys):
    """`remop-usb inpl-cutoff` on a FixMatch checkpoint prints the q-quantile of the labeled images' energies."""
    import numpy as np

    from remop_usb.cli import main as cli
    from remop_usb.launch import seed_everything

    run = dict(config="config/demo/fixmatch.yaml", num_train_iter=2, num_eval_iter=2)
    assert main(train_argv(tiny_rafdb, tmp_path, save_name="fm", **run)) == 0
    ckpt = os.path.join(tmp_path, "fm", "latest_model.pth")
    flags = ["--data_dir", tiny_rafdb, "--num_labels", "20", "--lb_imb_ratio", "10", "--img_size", "32",
             "--num_workers", "0", "--device", "cpu"]
    capsys.readouterr()
    assert cli(["inpl-cutoff", "--c", "config/demo/fixmatch.yaml", "--load_path", ckpt, "--quantile", "0.25",
                *flags]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("inpl_energy_cutoff:")]
    printed = float(line[0].split()[1])
    # by hand: the EMA model of the checkpoint, eval mode, -logsumexp of each labeled image's logits
    alg = build(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml")
    alg.load_model(ckpt)
    alg.ema_model.eval()
    seed_everything(0)  # as the command does: the same weak-view augmentations
    labeled = alg.dataset_dict["train_lb"]
    (images,) = [b["x_lb"] for b in torch.utils.data.DataLoader(labeled, batch_size=len(labeled), shuffle=False)]
    with torch.no_grad():
        energies = [-torch.logsumexp(alg.ema_model(x[None])["logits"][0], 0).item() for x in images]
    assert printed == pytest.approx(np.quantile(energies, 0.25), abs=1e-4)
    assert f"of {len(energies)} labeled images' energies" in line[0]
    assert cli(["inpl-cutoff", "--c", "config/demo/fixmatch.yaml", "--load_path", ckpt, "--quantile", "2"]) == 2
