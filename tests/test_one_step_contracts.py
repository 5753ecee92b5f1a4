"""One-step contracts: every semi-supervised method's unlabeled loss reaches the weights.

The method contracts (test_contracts*.py) read the pseudo-labels handed to the unlabeled loss, so a learner whose
unlabeled loss had weight 0, or was cut from the autograd graph, would pass them. Here every method -- each
``config/demo/*.yaml`` whose learner reads unlabeled images: all but ``supervised.yaml`` and
``remop_supervised.yaml``, whose steps take labeled batches only -- takes ONE training step (the hooks USB's loop
calls around it, conftest's ``start_training`` and ``step_on``) on the same first batch, from the same randomly
initialised weights, optimizer state and random draws (dropout, Bernoulli masks), in arms that differ only in the
settings :data:`ROWS` names:

- default: the method's own weights on its unlabeled terms, its pseudo-labels made to engage (the row's ``engage``
  settings, in every arm). With random weights a 7-way softmax never reaches tau = 0.95: FixMatch's mask would be all
  0 and its unlabeled loss exactly 0, in both arms. What is under test is the gradient path from the unlabeled loss
  to the weights, not the mask (the long contracts test the mask);
- zero: every unlabeled term's weight 0 -- or, for a term without a weight of its own, its gate shut;
- detached: the default weights on a learner whose unlabeled losses are cut from the graph (each term's
  ``breaker``).

Asserted, per row: (1) the default and zero arms end with different weights -- the unlabeled loss moves them -- and
so does zeroing each term alone (rows with several), with the pseudo-labels engaged as the row says (monitor masks);
(2) the zero arm ends where the detached arm does: the zeroed settings remove the unlabeled gradient and nothing else
(not a labeled term sharing a weight, as ABC's ``abc_loss_ratio`` would) and every term zeroed has its loss cut;
(3) for :data:`BROKEN_ROWS`, the contract run on the detached learner reports no difference: the check can fail.

Measured (CPU): every contract and every single-term difference is 2e-4 = 2 lr (Adam's first step, see
:data:`RELATIVE_TOLERANCE`: gradient signs flipped); the detached arm is bit-identical to the zero arm (0.0) in every
row; and the contract of the detached learner, run by hand for every row (``BROKEN_ROWS`` set to all of them),
reported 0.0 everywhere. Without the engage settings, FixMatch's and ReMoP-FixMatch's contracts measure exactly 0.0
(masks 0). Detaching ReMoP's unlabeled features alone left a difference of 2e-4: its centers learn
from the unlabeled rows too (:func:`cut_unlabeled_center_rows`), which (2) caught.

Each algorithm is built once (``build_for(..., seed=True)``, random init, 32 px, batch 4) and every arm steps a deep
copy of it: conftest's ``restored`` puts back weights and plain attributes, but one step also moves the optimizer's
moments, the scheduler and hooks' state (FlexMatch's selected labels, FreeMatch's and SoftMatch's running means,
DASO's queue, ...), any of which would make the arms differ for reasons other than the unlabeled loss. The module
takes about 70 s on one CPU thread: 24 builds (~0.3 s) and ~110 one-step arms (~0.4 s each: copy, step, Adam).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
from typing import Callable, NamedTuple
from unittest import mock

import pytest
import torch

from conftest import build_for, one_batch, start_training, step_on

# -- tolerance ---------------------------------------------------------------------------------------------------------
# Every demo config trains with Adam (lr 1e-4, no weight decay). Adam's first step moves a parameter by
# lr * g / (|g| + eps), eps = 1e-8: by lr against the sign of g for any |g| >> eps, whatever the gradient's scale.
# So two arms end 2 lr apart on a parameter whose gradient the unlabeled loss flips, lr apart on one that only the
# unlabeled loss reaches, and bit-identical where the computation is the same. Float noise (a sum reordered) could
# move w -/+ lr by an ulp: at most ulp(8) = 9.5e-7 for |w| < 8 (ResNet-18's weights, BatchNorm scales 1, ReMoP's
# randn centers). A tenth of lr, 1e-5, is 10x below the difference a flipped sign makes and 10x above that noise.
# (SGD would move by lr * g: the reasoning, and this bound, hold for Adam only, which :func:`tolerance` checks.)
RELATIVE_TOLERANCE = 0.1
#: every arm's random draws (dropout, ABC's Bernoulli masks) start from this seed
ARM_SEED = 0

#: tau that keeps every pseudo-label of a softmax: max p >= 1/K > 0
ACCEPT = 0.0
#: tau that keeps every row of ReMoP's mixture beta * p + (1 - beta) * cos, which is >= -(1 - beta) >= -1
ACCEPT_MIXTURE = -1.0
#: a threshold that keeps nothing
SHUT = math.inf


class Setting(NamedTuple):
    path: str  #: an attribute of the algorithm, or ``<hook name>.<attribute>`` of one of its hooks
    value: object  #: a number (a tensor attribute is filled with it), or a function of the attribute's value
    why: str


class Term(NamedTuple):
    key: str
    zero: tuple  #: Settings of the zero arm
    breaker: Callable  #: algorithm -> a context manager cutting the term's loss from the graph


class Row(NamedTuple):
    config: str  #: config/demo/<config>.yaml
    engage: tuple  #: Settings of every arm
    terms: tuple  #: the unlabeled Terms live under ``engage``
    masks: dict  #: pseudo-label monitor source -> its mean mask in the default arm
    variant: str = ""

    @property
    def id(self):
        return f"{self.config}-{self.variant}" if self.variant else self.config


# -- breakers: a learner whose unlabeled loss is cut from the graph ----------------------------------------------------

def _detached(result, index):
    if index is None:
        return result.detach()
    return tuple(r.detach() if i == index else r for i, r in enumerate(result))


def _callable(owner, name):
    """(object, attribute) of the callable ``owner.name``: a module's ``forward`` (so that the module itself, its
    forward hooks -- the pseudo-label monitor's -- and its methods -- SAW's ``set_weights`` -- stay)."""
    target = getattr(owner, name)
    return (target, "forward") if isinstance(target, torch.nn.Module) else (owner, name)


def cut(name, index=None, module=None):
    """Breaker: ``name`` -- an attribute of the algorithm, or of ``module`` -- with its result (its element
    ``index``) detached."""

    def install(algorithm):
        owner, attr = _callable(importlib.import_module(module) if module else algorithm, name)
        original = getattr(owner, attr)
        return mock.patch.object(owner, attr, lambda *args, **kwargs: _detached(original(*args, **kwargs), index))

    return install


def cut_argument(name, argument):
    """Breaker: the algorithm's method ``name`` called with its keyword ``argument`` detached."""

    def install(algorithm):
        original = getattr(algorithm, name)

        def broken(*args, **kwargs):
            return original(*args, **{**kwargs, argument: kwargs[argument].detach()})

        return mock.patch.object(algorithm, name, broken)

    return install


def cut_unlabeled_center_rows(algorithm):
    """Breaker of ReMoP's unlabeled center loss: ``center_loss`` gets its groups of squared distances (labeled rows,
    then confident unlabeled rows) with the unlabeled group detached: from the features, and from the centers, which
    it trains too with ``remop_center_update: gradient`` (the default; detaching the features alone leaves that)."""
    module = importlib.import_module("remop_usb.algorithms.remop")
    original = module.center_loss

    def broken(groups, *args, **kwargs):
        return original([groups[0], *(g.detach() for g in groups[1:])], *args, **kwargs)

    return mock.patch.object(module, "center_loss", broken)


def both(*breakers):
    """Breaker: every one of ``breakers`` installed together (a term whose loss is computed in several places)."""

    @contextlib.contextmanager
    def install(algorithm):
        with contextlib.ExitStack() as stack:
            for breaker in breakers:
                stack.enter_context(breaker(algorithm))
            yield

    return install


def times(factor):
    """Setting value: the loss callable with its result multiplied by ``factor`` (a weight the code lacks)."""
    return lambda loss: lambda *args, **kwargs: factor * loss(*args, **kwargs)


# -- the table ---------------------------------------------------------------------------------------------------------

P_ACCEPT = Setting("p_cutoff", ACCEPT, "tau: every softmax pseudo-label kept")
P_ACCEPT_MIXTURE = Setting("p_cutoff", ACCEPT_MIXTURE, "tau on ReMoP's mixture (>= -1): every pseudo-label kept")
REMOP_ACCEPT = Setting("tau", ACCEPT_MIXTURE, "remop_p_cutoff: every unlabeled row joins ReMoP's center loss")

LAMBDA_U = Setting("lambda_u", 0.0, "ulb_loss_ratio: the weight of the learner's unlabeled loss")
UNLABELED_CE = Term("ce", (LAMBDA_U,), cut("consistency_loss"))
CPE_CE = Term("ce", (Setting("lambda_u", 0.0, "ulb_loss_ratio: weighs the three experts' unlabeled losses"),),
              cut("expert_losses", index=1))
ACR_CE = Term("ce", (Setting("lambda_u", 0.0, "ulb_loss_ratio: weighs both heads' consistency losses, L_u + L_u^b"),),
              cut("consistency_loss"))
ABC_UNLABELED = Term("abc_ulb", (Setting("abc_p_cutoff", SHUT, "no weight of its own (abc_loss_ratio also weighs the "
                                                             "labeled ABC loss): its mask shut"),),
                     cut_argument("compute_abc_loss", "logits_x_ulb_s"))
DASO_ASSIGN = Term("assign", (Setting("lambda_f", 0.0, "daso_assign_loss_ratio: the semantic assignment loss"),),
                   cut("similarity_fn"))
TRAS_KL = Term("tras_kl", (Setting("tras_kl_loss.forward", times(0.0), "USB adds TRAS's unlabeled KL with a hard-coded "
                                                              "weight 1: its output multiplied by 0"),),
               cut("tras_kl_loss"))
FREEMATCH_ENTROPY = Term("entropy", (Setting("lambda_e", 0.0, "ent_loss_ratio: FreeMatch's entropy (fairness) term "
                                                             "on the strong view"),),
                         cut("entropy_loss", index=0, module="semilearn.algorithms.freematch.freematch"))
ADACM_CE = Term("ce", (Setting("lambda_u", 0.0, "ulb_loss_ratio: subset I's CE"),), cut("consistency_loss"))
ADACM_NTXENT = Term("ntxent", (Setting("contrast_weight", 0.0, "adacm_contrast_weight: subset II's NT-Xent"),),
                    cut("nt_xent", module="remop_usb.algorithms.adacm"))
METAEXPERT_CE = Term("ce", (Setting("lambda_u", 0.0, "ulb_loss_ratio: weighs the experts' unlabeled losses and the "
                                                    "DEA's and meta-expert's"),),
                     both(cut("expert_losses", index=1), cut("meta_unlabeled_loss", index=0)))
CPG_AUX = Term("aux", (Setting("lambda_u", 0.0, "ulb_loss_ratio: the auxiliary head's CE on every unlabeled image (the "
                                                "filter's admissions join the labeled set at the epoch's end)"),),
               cut("auxiliary_losses", index=1))
BACON_ABC = Term("abc_ulb", (Setting("abc_p_cutoff", SHUT, "bacon_abc_p_cutoff: no weight of its own "
                                                          "(bacon_abc_loss_ratio also weighs the labeled ABC loss): "
                                                          "its mask shut"),),
                 cut_argument("abc_loss", "logits_s"))
BACON_CONTRAST = Term("contrast", (Setting("bacon_ratio", 0.0, "bacon_loss_ratio: the contrastive loss, whose "
                                                               "anchors are the unlabeled rows alone (engage)"),),
                      cut("bacon_loss", index=0))
#: BaCon's settings beside its FixMatch tau: ABC's head and every unlabeled row an anchor from step 0, no labeled
#: anchor (so the contrastive term is an unlabeled one: labeled rows join it as negatives only), and a bank whose
#: rows are all stored, row r under class r mod 7: every class has a center
BACON_ENGAGE = (
    Setting("abc_p_cutoff", ACCEPT, "bacon_abc_p_cutoff: tau of ABC's auxiliary head"),
    Setting("bacon_ulb_cutoff", ACCEPT, "bacon_p_cutoff for unlabeled rows: every one an anchor"),
    Setting("bacon_lb_cutoff", SHUT, "bacon_p_cutoff for labeled rows: none an anchor"),
    Setting("bacon_start", 0.0, "the contrastive loss from step 0 (demo: from a third of the run)"),
    Setting("BaConBank.stored_labels", lambda labels: torch.arange(len(labels)) % 7,
            "the bank's rows stored, row r under class r mod 7 (its features: the initial ones)"),
)
ADELLO_START = Setting("distill_start_iter", 0, "CCR from step 0 (demo: from 19% of the run)")
ADELLO_SHUT = Setting("p_cutoff", SHUT, "no pseudo-label passes: CCR distils every unlabeled row")
ADELLO_CCR = Term("ccr", (Setting("lambda_distill", 0.0, "adello_lambda_distill: CCR's distillation"),),
                  cut("distillation_loss", module="remop_usb.algorithms.adello"))
REMOP_CENTERS = Term("centers", (Setting("tau", SHUT, "no weight of its own (lambda1 also weighs the labeled rows): "
                                                     "remop_p_cutoff shut, no unlabeled row"),),
                     cut_unlabeled_center_rows)


KEPT = {"pl": 1.0}  # every pseudo-label of the default arm kept (mean mask 1)


def plain(config, engage=(P_ACCEPT,), terms=(UNLABELED_CE,), masks=KEPT, variant=""):
    return Row(config, engage, terms, masks, variant)


def remop(config, engage=(P_ACCEPT_MIXTURE,), terms=(UNLABELED_CE,), masks=None, variant=""):
    """A learner under ReMoP: its own terms plus ReMoP's unlabeled center loss, every row of which is kept too."""
    masks = {**KEPT, "remop": 1.0} if masks is None else masks
    return Row(config, engage + (REMOP_ACCEPT,), terms + (REMOP_CENTERS,), masks, variant)


def margins(value):
    subset = "II" if value == SHUT else "I"
    return Setting("MaskingHook.margins", value, f"Ada-CM's class margins: every sample in subset {subset}")


ROWS = (
    plain("fixmatch"),
    plain("crest"),
    plain("crest_plus"),
    plain("saw"),
    plain("debiaspl"),
    plain("cdmad"),
    plain("simpro"),
    plain("darp", (P_ACCEPT, Setting("PseudoLabelingHook.warmup_epochs", -1,
                                     "DARP refines its pseudo-labels once epoch > warmup (demo: 1): from step 0"))),
    plain("adsh", (Setting("MaskingHook.thresholds", ACCEPT, "Adsh's class-wise thresholds (p_cutoff is unused)"),)),
    plain("inpl", (Setting("energy_cutoff", math.inf, "InPL's energy mask E(x) <= cutoff ('auto': FixMatch's mask "
                                                      "until mid-run): every energy passes"),)),
    plain("cpe", terms=(CPE_CE,)),
    plain("acr", terms=(ACR_CE,)),
    plain("metaexpert", terms=(METAEXPERT_CE,), masks={"pl": 1.0, "metaexpert": 1.0}),
    plain("cpg", (), terms=(CPG_AUX,), masks={"cpg_aux": 1.0}),
    plain("bacon", (P_ACCEPT,) + BACON_ENGAGE, terms=(UNLABELED_CE, BACON_ABC, BACON_CONTRAST),
          masks={"pl": 1.0, "abc": 1.0, "bacon": 1.0}),
    # ADELLO's two unlabeled terms split the batch (the mask: FixMatch's CE; its complement: CCR), as Ada-CM's
    plain("adello", (P_ACCEPT, ADELLO_START), variant="ce"),
    plain("adello", (ADELLO_SHUT, ADELLO_START), terms=(ADELLO_CCR,), masks={"pl": 0.0, "ccr": 1.0}, variant="ccr"),
    plain("abc", (P_ACCEPT, Setting("abc_p_cutoff", ACCEPT, "tau of ABC's balanced head")),
          terms=(UNLABELED_CE, ABC_UNLABELED)),
    plain("daso", (P_ACCEPT, Setting("num_pretrain_iter", 1, "DASO's assignment loss from step 0 (demo: 100)")),
          terms=(UNLABELED_CE, DASO_ASSIGN)),
    plain("tras", (P_ACCEPT, Setting("warmup_epochs", 0, "TRAS's head and its loss from epoch 0 (demo: 1)")),
          terms=(UNLABELED_CE, TRAS_KL)),
    # Ada-CM's two unlabeled terms split the batch (subset I: CE, subset II: NT-Xent): one row each, the other
    # subset empty (its loss exactly 0, so its weight needs no zeroing)
    plain("adacm", (margins(ACCEPT),), terms=(ADACM_CE,), variant="subset_I"),
    plain("adacm", (margins(SHUT),), terms=(ADACM_NTXENT,), masks={"pl": 0.0}, variant="subset_II"),
    remop("remop_fixmatch"),
    remop("remop_flexmatch", (P_ACCEPT_MIXTURE, Setting("MaskingHook.classwise_acc", 1.0, "FlexMatch's learning "
                                                        "effects at 1: each class's threshold is p_cutoff itself"))),
    remop("remop_freematch", (Setting("MaskingHook.time_p", ACCEPT_MIXTURE, "FreeMatch's self-adaptive threshold "
                                      "(an EMA, momentum 0.999): -0.999 after the step's update, every row kept"),),
          terms=(UNLABELED_CE, FREEMATCH_ENTROPY)),
    # SoftMatch weighs every row by a truncated Gaussian (> 0): nothing to open, and its weights need not be 1
    remop("remop_softmatch", (), masks={"remop": 1.0}),
    remop("remop_cdmad"),
    remop("remop_simpro"),
    remop("remop_acr", terms=(ACR_CE,)),
    remop("remop_cpg", (), terms=(CPG_AUX,), masks={"cpg_aux": 1.0, "remop": 1.0}),
    remop("remop_bacon", (P_ACCEPT_MIXTURE,) + BACON_ENGAGE, terms=(UNLABELED_CE, BACON_ABC, BACON_CONTRAST),
          masks={"pl": 1.0, "abc": 1.0, "bacon": 1.0, "remop": 1.0}),
    remop("remop_adello", (P_ACCEPT_MIXTURE, ADELLO_START), variant="ce"),
    remop("remop_adello", (ADELLO_SHUT, ADELLO_START), terms=(ADELLO_CCR,), masks={"pl": 0.0, "ccr": 1.0, "remop": 1.0},
          variant="ccr"),
    remop("remop_adacm", (margins(ACCEPT_MIXTURE),), terms=(ADACM_CE,), variant="subset_I"),
    remop("remop_adacm", (margins(SHUT),), terms=(ADACM_NTXENT,), masks={"pl": 0.0, "remop": 1.0},
          variant="subset_II"),
)

#: rows whose contract is also run on the detached learner in the suite (every row was checked once by hand)
BROKEN_ROWS = ("fixmatch", "remop_fixmatch", "tras")

#: demo configs without an unlabeled path
SUPERVISED = ("supervised", "remop_supervised")


# -- one step ----------------------------------------------------------------------------------------------------------

def _owner(algorithm, path):
    """(object, attribute) named by ``path``: dotted attributes from the algorithm, the first one possibly a hook's
    name."""
    *heads, attr = path.split(".")
    owner = algorithm
    for i, head in enumerate(heads):
        owner = algorithm.hooks_dict[head] if i == 0 and head in algorithm.hooks_dict else getattr(owner, head)
    return owner, attr


def apply(algorithm, settings):
    for setting in settings:
        owner, attr = _owner(algorithm, setting.path)
        current = getattr(owner, attr)
        if callable(setting.value):
            value = setting.value(current)
        elif isinstance(current, torch.Tensor):
            value = torch.full_like(current, setting.value)
        else:
            value = setting.value
        setattr(owner, attr, value)


class Arm(NamedTuple):
    params: list  #: the trainable parameters after the step
    masks: dict  #: pseudo-label source -> mean mask of the step


def arm(built, batch, settings, breakers=()):
    """One USB step of a copy of ``built`` on ``batch`` with ``settings`` applied and ``breakers`` installed."""
    algorithm = copy.deepcopy(built, {id(built.dataset_dict): built.dataset_dict,  # read-only in a step
                                      id(built.loader_dict): built.loader_dict})
    with contextlib.ExitStack() as stack:
        for install in breakers:
            stack.enter_context(install(algorithm))
        torch.manual_seed(ARM_SEED)
        start_training(algorithm)
        apply(algorithm, settings)  # after before_run, which (re)sets some of them
        step_on(algorithm, batch)
    params = [p.detach().clone() for p in algorithm.model.parameters() if p.requires_grad]
    masks = {source: fig["mask"] for source, fig in algorithm.pseudo_label_monitor.step.items()}
    return Arm(params, masks)


def zeroed(terms):
    return tuple(setting for term in terms for setting in term.zero)


def breakers_of(terms):
    return tuple(term.breaker for term in terms)


def contract_arms(built, batch, row, breakers=()):
    """The contract's two arms: (default, zero) after one step."""
    return arm(built, batch, row.engage, breakers), arm(built, batch, row.engage + zeroed(row.terms), breakers)


def max_difference(a: Arm, b: Arm) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.params, b.params, strict=True))


def tolerance(algorithm) -> float:
    """:data:`RELATIVE_TOLERANCE` x the learning rate (see the comment there): Adam, one rate, no weight decay."""
    assert isinstance(algorithm.optimizer, torch.optim.Adam), type(algorithm.optimizer)
    groups = algorithm.optimizer.param_groups
    assert len({g["lr"] for g in groups}) == 1 and all(g["weight_decay"] == 0 for g in groups)
    return RELATIVE_TOLERANCE * groups[0]["lr"]


class Figures(NamedTuple):
    tolerance: float
    masks: dict  #: of the default arm
    contract: float  #: max |default - zero|
    terms: dict  #: term key -> max |default - this term zeroed| (rows with several terms)
    detached: float  #: max |zero - detached|
    broken: float | None  #: the contract on the detached learner (BROKEN_ROWS)

    def moved(self, difference) -> bool:
        """The contract's verdict on two arms max ``difference`` apart: the weights differ beyond float noise."""
        return difference > self.tolerance


def measure(built, row):
    batch = one_batch(built)
    default, zero = contract_arms(built, batch, row)
    detached = arm(built, batch, row.engage, breakers_of(row.terms))
    terms = {} if len(row.terms) < 2 else {
        term.key: max_difference(default, arm(built, batch, row.engage + term.zero)) for term in row.terms}
    broken = None
    if row.id in BROKEN_ROWS:
        broken = max_difference(*contract_arms(built, batch, row, breakers_of(row.terms)))
    return Figures(tolerance(built), default.masks, max_difference(default, zero), terms,
                   max_difference(zero, detached), broken)


@pytest.fixture(scope="module")
def figures(tiny_rafdb, tmp_path_factory):
    """``figures(row)``: the row's :class:`Figures`, measured once; the last config's build is kept for the next
    row (Ada-CM's two rows share one)."""
    measured, last = {}, {}

    def get(row):
        if row.id not in measured:
            if row.config not in last:
                last.clear()
                last[row.config] = build_for(tiny_rafdb, tmp_path_factory.mktemp(row.config),
                                             config=f"config/demo/{row.config}.yaml", seed=True)
            measured[row.id] = measure(last[row.config], row)
        return measured[row.id]

    yield get
    last.clear()


ROW_IDS = [row.id for row in ROWS]


def test_every_semi_supervised_demo_config_has_a_row():
    from conftest import demo_configs

    configs = {path.rsplit("/", 1)[-1][:-len(".yaml")] for path in demo_configs()}
    assert set(SUPERVISED) <= configs and {row.config for row in ROWS} == configs - set(SUPERVISED)
    assert len(set(ROW_IDS)) == len(ROWS) and set(BROKEN_ROWS) <= set(ROW_IDS)


@pytest.mark.parametrize("config", SUPERVISED)
def test_the_configs_without_a_row_step_on_labeled_batches_only(config, tiny_rafdb, tmp_path):
    algorithm = build_for(tiny_rafdb, tmp_path, config=f"config/demo/{config}.yaml", seed=True)
    assert set(one_batch(algorithm)) == {"x_lb", "y_lb"}


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_unlabeled_loss_moves_the_weights(row, figures):
    fig = figures(row)
    assert {source: fig.masks.get(source) for source in row.masks} == row.masks  # the engage settings acted
    assert fig.moved(fig.contract), fig


MULTI_TERM = [(row, term.key) for row in ROWS if len(row.terms) > 1 for term in row.terms]


@pytest.mark.parametrize("row,term", MULTI_TERM, ids=[f"{row.id}-{term}" for row, term in MULTI_TERM])
def test_each_unlabeled_term_moves_the_weights(row, term, figures):
    fig = figures(row)
    assert fig.moved(fig.terms[term]), fig


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_zero_weights_remove_exactly_the_unlabeled_gradient(row, figures):
    fig = figures(row)
    assert not fig.moved(fig.detached), fig


@pytest.mark.parametrize("row", [row for row in ROWS if row.id in BROKEN_ROWS],
                         ids=[row.id for row in ROWS if row.id in BROKEN_ROWS])
def test_contract_reports_no_difference_on_a_detached_learner(row, figures):
    fig = figures(row)
    assert fig.broken is not None and not fig.moved(fig.broken), fig
