"""Method contract (tests/test_contracts.py) of SimPro: from the stand-in backbone, the pseudo-labels its
unsupervised loss trains on engage (mask) and are right (accuracy against the kept-back labels) over the second half
of a 100-step run, and its closed-form prior update has acted at the epoch end (step 50): the E-step's unlabeled
prior pi_u is no longer the uniform one it starts from.

ReMoP on SimPro (config/demo/remop_simpro.yaml) is held to the same floors for both its sources: SimPro's
pseudo-labels from the prior-shifted mixture (``pl``) and ReMoP's confident mixture rows (``remop``). Both were dead
(mask 0.00) before the E-step stopped normalising the mixture row and SimPro stopped overwriting ReMoP's threshold;
tests/test_simpro.py checks both mechanisms by hand."""

import pytest
import torch

from test_contracts import ACC_FLOOR, MASK_FLOOR, contract_run, final

pytestmark = pytest.mark.slow  # every contract trains 100 steps from the stand-in backbone (40-55 s each on 2 cores)

CONTRACTS = {
    "config/demo/simpro.yaml": ("pl",),
    "config/demo/remop_simpro.yaml": ("pl", "remop"),
}


@pytest.mark.parametrize("config", sorted(CONTRACTS))
def test_simpro_unlabeled_path_engages_and_its_pseudo_labels_are_right(config, contract_rafdb, pretrained_backbone,
                                                                       tmp_path):
    algorithm = contract_run(contract_rafdb, tmp_path, pretrained_backbone, config)
    figures = {source: final(algorithm, source) for source in CONTRACTS[config]}
    print(config, {s: (round(f["mask"], 3), f["acc"] and round(f["acc"], 3)) for s, f in figures.items()})
    for source, fig in figures.items():
        assert fig["mask"] >= MASK_FLOOR, (source, fig)
        assert fig["acc"] is not None and fig["acc"] >= ACC_FLOOR, (source, fig)
    pi_u = algorithm.priors.pi_u.cpu()
    assert not torch.allclose(pi_u, torch.full_like(pi_u, 1 / 7)), pi_u.tolist()  # re-estimated at step 50
