"""USB 0.3.2's other imbalanced algorithms on FER (remop_usb/usb_compat/imb_algorithms.py): each trains, resumes
exactly, and learns from unlabeled data -- or is refused in one line.

- CoSSL, and any of them on a base learner other than FixMatch, is refused by the config in one line.
- CReST's pseudo-label sampling keeps, per class of frequency rank r, (N_(K-1-r) / N_(0))^(1/alpha) of its
  pseudo-labels: checked against numbers worked by hand.
- Exact resume (in one process, CPU): a run resumed from a checkpoint written mid-run ends with the same weights,
  EMA weights and algorithm state as the uninterrupted run -- with each algorithm's own mechanism active before and
  after the checkpoint (CReST: a checkpoint of its second generation; SAW: refitted weights; DARP: refined
  pseudo-labels; DASO: its feature queue; DebiasPL: p_hat; TRAS: its auxiliary head).
- Method contracts (as tests/test_contracts.py): from the stand-in backbone, the pseudo-labels each algorithm's
  unlabeled loss trains on (source ``pl``, and TRAS's own loss ``tras``) engage and are mostly right, with each
  algorithm's mechanism active in the second half of the run over which the figures are taken.
"""

import os
import shutil

import numpy as np
import pytest
import torch

from conftest import build_for, one_line_error
from test_contracts import ACC_FLOOR, ITERATIONS, MASK_FLOOR, contract_run, final

pytestmark = pytest.mark.slow  # every contract trains 100 steps from the stand-in backbone (40-110 s each on 2 cores)

#: demo config -> keys of a few-step CPU run that put the algorithm's own mechanism in both halves of an 8-step,
#: 2-epoch run whose first checkpoint comes at step 3 (CReST: two 4-step generations, checkpoints at 3 and 4 of each)
RESUME = {  # (crest and crest+ are one class; crest+ has more state: its distribution alignment)
    "crest_plus": dict(num_train_iter=4, epoch=1, crest_num_gens=2),
    "saw": {},
    "darp": dict(darp_warmup_epochs=0, darp_num_refine_iter=2),
    "daso": dict(daso_num_pretrain_iter=2, daso_num_pl_dist_iter=1),
    "debiaspl": dict(debiaspl_ema_p=0.9),
    "tras": dict(tras_warmup_epochs=0),
}

#: demo config -> (keys of the contract run putting the mechanism in its second half, pseudo-label sources).
#: Each method is held to the regime of every contract: the figures cover the second half of 100 steps of the model
#: or head whose pseudo-labels they are, trained from the stand-in backbone and a fresh head.
CONTRACTS = {
    # CReST restarts the model from the backbone in each generation: two generations of ITERATIONS steps, the figures
    # over steps 50-99 of the second (with 75-step generations, steps 25-74 of the second: mask 0.040 and 0.0275,
    # pseudo-labels 100% right -- the restarted model had not trained long enough, as no method's has by step 25)
    "crest": (dict(num_train_iter=ITERATIONS, epoch=1, crest_num_gens=2), ("pl",)),
    "crest_plus": (dict(num_train_iter=ITERATIONS, epoch=1, crest_num_gens=2), ("pl",)),
    "saw": ({}, ("pl",)),
    "darp": (dict(darp_warmup_epochs=0), ("pl",)),
    "daso": (dict(daso_num_pretrain_iter=ITERATIONS // 2, daso_num_pl_dist_iter=10), ("pl",)),
    "debiaspl": ({}, ("pl",)),
    # TRAS's auxiliary head is a fresh linear layer: it trains from step 0 (tras_warmup_epochs 0), as every learner's
    # linear head does (with warm-up 1 the head trained from step 50, and its mask over its first 50 steps was 0.020)
    "tras": (dict(tras_warmup_epochs=0), ("pl", "tras")),
}


def _config(name):
    return f"config/demo/{name}.yaml"


# -- refusals --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["--algorithm", "fixmatch", "--imb_algorithm", "cossl"], "imb_algorithm 'cossl' is refused: USB 0.3.2's CoSSL"),
    (["--algorithm", "flexmatch", "--imb_algorithm", "tras"], "imb_algorithm 'tras' runs on algorithm fixmatch"),
    (["--algorithm", "supervised", "--imb_algorithm", "daso"], "imb_algorithm 'daso' runs on algorithm fixmatch"),
])
def test_refused_in_one_line_before_anything_is_built(argv, expected):
    from remop_usb.config import parse_args

    assert one_line_error(parse_args, argv).startswith(expected)


@pytest.mark.parametrize("count,blend,refused", [(21, 20, True), (0, 20, True), (20, 20, False), (5, 20, False),
                                                  (1, 0, True)])
def test_daso_refuses_a_blend_before_its_first_pseudo_label_count(count, blend, refused):
    """USB's DASO counts its pseudo-label distribution after steps count - 1, 2 count - 1, ... (all zeros before) and
    blends from step ``blend``: count 21 with blend 20 blends at step 20 with the 0/0 distribution."""
    from remop_usb.config import parse_args

    argv = ["--c", _config("daso"), "--daso_num_pl_dist_iter", str(count), "--daso_num_pretrain_iter", str(blend)]
    if refused:
        assert one_line_error(parse_args, argv).startswith(f"daso_num_pl_dist_iter ({count}) must be between 1 "
                                                           f"and daso_num_pretrain_iter ({blend})")
    else:
        assert (parse_args(argv).daso_num_pl_dist_iter, parse_args(argv).daso_num_pretrain_iter) == (count, blend)


def test_a_blend_before_daso_counts_makes_every_pseudo_label_class_0():
    """Why the refusal above: USB's hook with its initial all-zero count (no recount yet) past the warm-up, on rows
    whose argmax is never 0, blends NaN rows; their argmax is class 0 for every unlabeled image."""
    from types import SimpleNamespace

    from semilearn.imb_algorithms.daso.utils import DASOPseudoLabelingHook

    hook = DASOPseudoLabelingHook(num_classes=3, T_dist=1.5, with_dist_aware=True, interp_alpha=0.5)
    algorithm = SimpleNamespace(it=20, num_pretrain_iter=20, T_dist=1.5, with_dist_aware=True, interp_alpha=0.5,
                                probs_sim=torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1]]))
    probs = torch.tensor([[0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])  # FixMatch passes probabilities (softmax=False)
    assert torch.isnan(hook.get_pl_dist()).all()
    assert hook.gen_ulb_targets(algorithm, probs, softmax=False).tolist() == [0, 0]
    hook.pseudo_label_dist = [1, 1, 2]  # once counted, the blend keeps each row's class
    assert hook.gen_ulb_targets(algorithm, probs, softmax=False).tolist() == [2, 1]


def test_every_listed_imb_algorithm_has_a_demo_config_or_is_refused():
    from remop_usb import registry
    from remop_usb.usb_compat.imb_algorithms import REFUSED

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in registry.imb_algorithms():
        demo = os.path.join(repo, "config", "demo", name.replace("+", "_plus") + ".yaml")
        assert (name in REFUSED) != os.path.exists(demo) or name in ("abc", "adsh", "remop"), name


# -- CReST's sampling ------------------------------------------------------------------------------------------------

def test_crest_keeps_pseudo_labels_by_frequency_rank():
    """Labeled counts 20 (class 1, rank 0), 10 (class 0), 5 (class 2), alpha 1: class of rank r keeps
    N_(K-1-r) / N_(0): rank 0 5/20, rank 1 10/20, rank 2 20/20 -- by rank, not by class index (USB's rule would give
    class 0 the head's fraction)."""
    from remop_usb.usb_compat.imb_algorithms import crest_keep_fractions

    assert crest_keep_fractions([10, 20, 5], alpha=1.0).tolist() == pytest.approx([0.5, 0.25, 1.0])
    # alpha 2: square roots
    assert crest_keep_fractions([10, 20, 5], alpha=2.0).tolist() == pytest.approx([0.5 ** 0.5, 0.5, 1.0])


# -- exact resume ----------------------------------------------------------------------------------------------------

def _state(algorithm):
    """What must match between a resumed and an uninterrupted run: weights, EMA weights, optimizer moments and the
    algorithm's own state."""
    from remop_usb.usb_compat import unwrap

    out = {f"model.{k}": v for k, v in algorithm.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in algorithm.ema_model.state_dict().items()})
    for attr in ("x_lb_weights", "x_ulb_weights", "p_hat"):
        if getattr(algorithm, attr, None) is not None:
            out[attr] = getattr(algorithm, attr)
    if hasattr(algorithm, "queue"):
        out["queue.prototypes"] = algorithm.queue.prototypes
    hook = algorithm.hooks_dict.get("PseudoLabelingHook")
    if hasattr(hook, "pseudo_refine"):
        out["darp.pseudo_refine"] = hook.pseudo_refine
    assert unwrap(algorithm.model) is not None
    return {k: v.detach().cpu() for k, v in out.items()}


def _keep_checkpoint(algorithm, folder, n):
    """Copy the ``n``-th latest_model.pth (n = 1, 2, ...) the run writes into its save dir to ``folder``/<n>.pth; a
    list that holds its path once written (only that one is kept: each is ~180 MB, and CI's disk is small)."""
    original, count, kept = algorithm.save_model, [0], []
    run_dir = os.path.join(algorithm.save_dir, algorithm.save_name)

    def save_model(save_name, save_path):
        original(save_name, save_path)
        if save_name == "latest_model.pth" and os.path.abspath(save_path) == os.path.abspath(run_dir):
            count[0] += 1
            if count[0] == n:
                kept.append(shutil.copy(os.path.join(save_path, save_name), os.path.join(folder, f"{n}.pth")))

    algorithm.save_model = save_model
    return kept


@pytest.mark.parametrize("name", sorted(RESUME))
def test_resumed_run_ends_like_the_uninterrupted_one(name, tiny_rafdb, tmp_path):
    keys = dict(config=_config(name), num_train_iter=8, epoch=2, num_eval_iter=3, ema_m=0.9)
    keys.update(RESUME[name])
    whole = build_for(tiny_rafdb, tmp_path / "whole", seed=True, **keys)
    # the checkpoint to resume from: the first one (CReST: the first of its second generation; SAW: the first after
    # its epoch-end refit of the unlabeled class weights)
    first = {"crest": 3, "crest_plus": 3, "saw": 2}.get(name, 1)
    kept = _keep_checkpoint(whole, tmp_path, first)
    whole.train()
    shutil.rmtree(tmp_path / "whole")  # its state is compared from memory
    (kept,) = kept
    checkpoint = torch.load(kept, map_location="cpu", weights_only=False)
    assert 0 < checkpoint["it"] < whole.num_train_iter and checkpoint.get("gen", 1) == 1

    resumed = build_for(tiny_rafdb, tmp_path / "resumed", seed=True, resume=True, **keys)
    resumed.load_model(kept)
    if name == "saw":  # its refitted unlabeled class weights (not uniform) survive before_run (USB's resets them)
        assert checkpoint["x_ulb_weights"].unique().numel() > 1
        resumed.call_hook("before_run", "SAWWeightsHook")
        assert torch.equal(resumed.x_ulb_weights.cpu(), checkpoint["x_ulb_weights"])
    resumed.train()
    expected, got = _state(whole), _state(resumed)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, different[:5]


# -- method contracts ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_unlabeled_path_engages_and_its_pseudo_labels_are_right(name, contract_rafdb, pretrained_backbone, tmp_path):
    overrides, sources = CONTRACTS[name]
    algorithm = contract_run(contract_rafdb, tmp_path, pretrained_backbone, _config(name), **overrides)
    figures = {source: final(algorithm, source) for source in sources}
    print(name, {s: (round(f["mask"], 3), f["acc"] and round(f["acc"], 3)) for s, f in figures.items()})
    for source, fig in figures.items():
        assert fig["mask"] >= MASK_FLOOR, (source, fig)
        assert fig["acc"] is not None and fig["acc"] >= ACC_FLOOR, (source, fig)
    if name.startswith("crest"):  # the second generation trained on a labeled set grown by pseudo-labels
        assert algorithm.gen == 1 and len(algorithm.dataset_dict["train_lb"]) > 56
