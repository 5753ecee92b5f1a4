"""Method contracts of ACR, CDMAD and CPG, alone and with ReMoP on top, and of Meta-Expert (tests/test_contracts.py's
regime and floors): each trains :data:`~test_contracts.ITERATIONS` steps from the stand-in backbone on the synthetic
RAF-DB, and the pseudo-labels its unsupervised loss trains on (``pl``; CPG: those its filter admits into the labeled
set; Meta-Expert: its long-tailed expert's, and the meta-expert's own as ``metaexpert``) -- and with ReMoP, ReMoP's
own confident rows (``remop``) -- engage (mask >= MASK_FLOOR) and are right (accuracy >= ACC_FLOOR) over the second
half of the run. CPG's labeled set has grown by then (its first epoch's admissions).

ACR's adaptive strength engages too: the demo estimates the unlabeled distribution from the second epoch on, so by
the end of the run tau has been set from the anchor distances (it starts at tau_max = 2, and a softmax over three
distances gives tau_max only in the limit), and the estimate has left the uniform start.
"""

import pytest
import torch

from test_contracts import ACC_FLOOR, MASK_FLOOR, contract_run, final

CONTRACTS = {
    "config/demo/acr.yaml": ("pl",),
    "config/demo/cdmad.yaml": ("pl",),
    "config/demo/remop_acr.yaml": ("pl", "remop"),
    "config/demo/remop_cdmad.yaml": ("pl", "remop"),
    # Meta-Expert: its long-tailed expert's pseudo-labels (``pl``, as CPE's) and the meta-expert's (``metaexpert``)
    "config/demo/metaexpert.yaml": ("pl", "metaexpert"),
    # CPG: ``pl`` is what its filter admits into the labeled set (from epoch 1 on, the labeled batches draw them)
    "config/demo/cpg.yaml": ("pl",),
    "config/demo/remop_cpg.yaml": ("pl", "remop"),
}


@pytest.mark.parametrize("config", sorted(CONTRACTS))
def test_unlabeled_path_engages_and_its_pseudo_labels_are_right(config, contract_rafdb, pretrained_backbone, tmp_path):
    algorithm = contract_run(contract_rafdb, tmp_path, pretrained_backbone, config)
    figures = {source: final(algorithm, source) for source in CONTRACTS[config]}
    print(config, figures)
    for source, fig in figures.items():
        assert fig["mask"] >= MASK_FLOOR, (source, fig)
        assert fig["acc"] is not None and fig["acc"] >= ACC_FLOOR, (source, fig)
    if "cpg" in config:  # the labeled set grew by the admitted images (the split labels 56)
        assert len(algorithm.dataset_dict["train_lb"]) > 56 and int((algorithm.labeled_set.status >= 0).sum()) > 0
    if "acr" in config:
        hook = algorithm.hooks_dict["ACRTauHook"]
        assert hook.tau < algorithm.args.acr_tau1, hook.tau
        uniform = torch.full_like(hook.u_py, 1.0 / algorithm.num_classes)
        assert not torch.allclose(hook.u_py.cpu(), uniform), hook.u_py
