"""InPL (energy-based pseudo-labelling) against values computed by hand, inside USB's real FixMatch step."""

import glob
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


# -- the cutoff: calibration in train mode, no default, `auto` ----------------------------------------------------

class _BatchNormLogits(torch.nn.Module):
    """logits = BatchNorm1d(x) without affine parameters: in train mode (x - batch mean) / batch std, in eval mode
    (x - running mean) / running std -- x itself while the running statistics are the initial 0 and 1."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(2, affine=False, eps=1e-12)

    def forward(self, x):
        return {"logits": self.bn(x)}


def test_calibration_runs_the_model_in_train_mode_and_leaves_it_unchanged():
    from remop_usb.algorithms.inpl import train_mode_logits

    model = _BatchNormLogits().eval()
    dataset = [{"x_lb": torch.tensor(row)} for row in ([0.0, 0.0], [2.0, 4.0])]
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    logits = train_mode_logits(model, dataset, batch_size=8)
    # train mode: batch mean [1, 2], biased std [1, 2] -> rows [-1, -1] and [1, 1]
    assert torch.allclose(logits, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    energies = energy_score(logits)
    assert torch.allclose(energies, torch.tensor([1 - math.log(2), -1 - math.log(2)]))
    # eval mode would give logits x: energies -ln 2 and -(4 + ln(1 + e^-2)) -- 1 and 0.86 apart from train mode's
    with torch.no_grad():
        eval_energies = energy_score(model(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))["logits"])
    assert torch.allclose(eval_energies, torch.tensor([-math.log(2), -4 - math.log(1 + math.exp(-2))]))
    # the model as it was: eval mode, running statistics and batch counter untouched; the global RNG not consumed
    assert not model.training
    assert torch.equal(model.bn.running_mean, torch.zeros(2)) and torch.equal(model.bn.running_var, torch.ones(2))
    assert model.bn.num_batches_tracked.item() == 0
    assert torch.equal(torch.rand(3), expected_draw)


def test_labeled_energy_cutoff_is_the_quantile_of_train_mode_energies_and_changes_nothing(alg):
    from datasets_fer.transforms import eval_transform
    from remop_usb.algorithms.inpl import labeled_energy_cutoff

    dataset = alg.dataset_dict["train_lb"]
    weak = dataset.transform
    dataset.transform = eval_transform(32)  # deterministic images, to recompute the energies by hand
    before = {k: v.clone() for k, v in alg.model.state_dict().items()}
    try:
        torch.manual_seed(123)
        cutoff = labeled_energy_cutoff(alg, 0.25)
        after = alg.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # BN running statistics included
        torch.manual_seed(0)  # the run's seed: the calibration's loader and dropout draws
        (images,) = [b["x_lb"] for b in torch.utils.data.DataLoader(dataset, batch_size=len(dataset))]
    finally:
        dataset.transform = weak
    assert len(images) == 56  # one batch (eval_batch_size 64): BatchNorm normalises over all 56
    model = alg.model
    with torch.no_grad():
        energies = -torch.logsumexp(model.train()(images)["logits"], dim=1)
        eval_energies = -torch.logsumexp(model.eval()(images)["logits"], dim=1)
    model.train()
    alg.model.load_state_dict(before)  # the hand-computed train-mode pass moved the running statistics
    assert cutoff == pytest.approx(torch.quantile(energies.double(), 0.25).item(), abs=1e-4)
    assert int((energies <= cutoff + 1e-6).sum()) == 14  # a quarter of the 56 labeled images at or below it
    assert abs(cutoff - torch.quantile(eval_energies.double(), 0.25).item()) > 1e-3  # not the eval-mode value


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPL_PAPER_CONFIGS = sorted(glob.glob(os.path.join(REPO, "config", "paper", "*", "inpl_*.yaml")))


def test_no_shipped_config_but_the_demos_carries_a_cutoff():
    assert len(INPL_PAPER_CONFIGS) == 10  # every setting of Tables 3-5
    for path in glob.glob(os.path.join(REPO, "config", "**", "*.yaml"), recursive=True):
        values = [ln.split("#")[0].split(":", 1)[1].strip() for ln in open(path)
                  if ln.startswith("inpl_energy_cutoff:")]
        expected = (["auto"] if path.endswith(os.path.join("demo", "inpl.yaml")) else
                    ["None"] if path in INPL_PAPER_CONFIGS else [])
        assert values == expected, path


@pytest.mark.parametrize("path", INPL_PAPER_CONFIGS, ids=os.path.basename)
def test_paper_configs_stop_with_one_line_naming_the_calibration_command(path, tmp_path):
    from conftest import one_line_error
    from remop_usb.launch import build_algorithm

    args = parse_args(["--c", path, "--device", "cpu", "--save_dir", str(tmp_path)])
    assert args.inpl_energy_cutoff is None
    line = next(i for i, text in enumerate(open(path), 1) if text.startswith("inpl_energy_cutoff:"))
    msg = one_line_error(build_algorithm, args)
    base = path.replace(os.sep + "inpl_", os.sep + "fixmatch_")
    half = args.num_train_iter // 2
    assert msg.startswith(f"{path}:{line}: inpl_energy_cutoff is not set;")
    assert f"python train.py --c {base} --num_train_iter {half} --save_name fixmatch_half" in msg
    assert (f"`remop-usb inpl-cutoff --c {path} --load_path "
            f"{os.path.join(str(tmp_path), 'fixmatch_half', 'latest_model.pth')}`") in msg
    assert "set inpl_energy_cutoff to the value it prints" in msg and "inpl_energy_cutoff: auto" in msg


def test_train_py_without_a_cutoff_exits_2_with_one_line(tiny_rafdb, tmp_path, capsys):
    assert main(train_argv(tiny_rafdb, tmp_path, config="config/demo/inpl.yaml", inpl_energy_cutoff="None")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: command line: inpl_energy_cutoff is not set;")
    assert "remop-usb inpl-cutoff --c" in err[0] and "config/demo/inpl.yaml --load_path" in err[0]


def test_cutoff_values(tiny_rafdb, tmp_path):
    from conftest import config_error

    argv = train_argv(tiny_rafdb, tmp_path, config="config/demo/inpl.yaml")
    assert parse_args(argv).inpl_energy_cutoff == "auto"  # the demo measures it in the run
    assert parse_args(argv + ["--inpl_energy_cutoff", "-7.25"]).inpl_energy_cutoff == -7.25
    path, msg = config_error(tmp_path, "algorithm: fixmatch\nimb_algorithm: inpl\ninpl_energy_cutoff: .nan\n")
    assert msg == f"{path}:3: key 'inpl_energy_cutoff' expects a finite number, auto, or None, got nan"


def test_auto_uses_fixmatchs_mask_then_the_cutoff_measured_at_half_the_schedule(alg):
    assert alg.auto_cutoff and alg.energy_cutoff is None and alg.calibration_iter == 3  # num_train_iter 6
    batch = one_batch(alg)
    torch.manual_seed(0)
    _, log, weak, mask = _weak_logits_of_step(alg, batch)  # it = 0: the base learner, FixMatch's confidence mask
    assert torch.equal(mask, (torch.softmax(weak, dim=1).max(dim=1).values >= alg.p_cutoff).float())
    assert alg.energy_cutoff is None and "train/inpl_energy_cutoff" not in log
    alg.it = 2
    alg.train_step(**batch)
    assert alg.energy_cutoff is None
    alg.it = 3
    expected = __import__("remop_usb.algorithms.inpl").algorithms.inpl.labeled_energy_cutoff(alg)
    torch.manual_seed(0)
    _, log, weak, mask = _weak_logits_of_step(alg, batch)  # measured first, then the energy mask
    assert alg.energy_cutoff == expected and math.isfinite(expected)
    assert log["train/inpl_energy_cutoff"] == expected
    assert torch.equal(mask, (-torch.logsumexp(weak, dim=1) <= expected).float())


def test_auto_cutoff_equals_the_commands_on_the_same_checkpoint_and_is_resumed(tiny_rafdb, tmp_path, capsys):
    """`auto` and `remop-usb inpl-cutoff` are one measurement: the same number on the same weights and data."""
    from conftest import start_training, step_on
    from remop_usb.cli import main as cli

    alg = build(tiny_rafdb, tmp_path)
    start_training(alg)
    batch = one_batch(alg)
    step_on(alg, batch)  # weights that are not the initial ones' ...
    assert alg.energy_cutoff is None
    alg.save_model("base.pth", str(tmp_path))  # ... saved before the cutoff is measured
    alg.it = alg.calibration_iter
    alg.train_step(**batch)
    measured = alg.energy_cutoff
    assert math.isfinite(measured)
    flags = ["--data_dir", os.path.dirname(alg.args.data_dir + "/"), "--num_labels", "20", "--lb_imb_ratio", "10",
             "--img_size", "32", "--num_workers", "0", "--device", "cpu", "--eval_batch_size", "64"]
    capsys.readouterr()
    # an InPL config without a cutoff (as the paper configs): the command measures it all the same
    assert cli(["inpl-cutoff", "--c", "config/demo/inpl.yaml", "--inpl_energy_cutoff", "None", "--load_path",
                os.path.join(tmp_path, "base.pth"), *flags]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("inpl_energy_cutoff:")]
    assert float(line[0].split()[1]) == pytest.approx(measured, abs=1e-4)
    # a resumed auto run keeps the measured cutoff
    alg.save_model("measured.pth", str(tmp_path))
    alg.energy_cutoff = None
    alg.load_model(os.path.join(tmp_path, "measured.pth"))
    assert alg.energy_cutoff == measured


def test_cutoff_command_measures_the_labeled_quantile_of_a_checkpoint(tiny_rafdb, tmp_path, capsys):
    """`remop-usb inpl-cutoff` on a FixMatch checkpoint prints the q-quantile of the labeled images' energies."""
    import numpy as np

    from remop_usb.cli import main as cli

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
    # by hand: the training model of the checkpoint in train mode, the 56 labeled images' weak views in one batch
    # (eval_batch_size 128), augmentations and dropout drawn from the seed 0
    alg = build(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml")
    alg.load_model(ckpt)
    labeled = alg.dataset_dict["train_lb"]
    torch.manual_seed(0)
    (images,) = [b["x_lb"] for b in torch.utils.data.DataLoader(labeled, batch_size=len(labeled), shuffle=False)]
    with torch.no_grad():
        energies = -torch.logsumexp(alg.model.train()(images)["logits"], dim=1).numpy()
    assert printed == pytest.approx(np.quantile(energies, 0.25), abs=1e-4)
    assert f"of {len(energies)} labeled images' energies" in line[0]
    # the command a cutoff-less InPL run names: its own config, the base learner's checkpoint -- the same figures
    assert cli(["inpl-cutoff", "--c", "config/demo/inpl.yaml", "--inpl_energy_cutoff", "None", "--load_path", ckpt,
                "--quantile", "0.25", *flags]) == 0
    assert [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("inpl_energy_cutoff:")] == line
    assert cli(["inpl-cutoff", "--c", "config/demo/fixmatch.yaml", "--load_path", ckpt, "--quantile", "2"]) == 2
