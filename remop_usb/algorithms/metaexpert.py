"""Meta-Expert as a USB base learner: ``algorithm: metaexpert`` (FixMatch's batches, CPE's three experts, a
meta-expert that assigns each sample one of them). ReMoP does not compose with it (see the end).

Paper: Hou & Jia, "A Square Peg in a Square Hole: Meta-Expert for Long-Tailed Semi-Supervised Learning", ICML 2025
(arXiv 2505.16341; authors' code: YaxinHou/Meta-Expert, ``semilearn/imb_algorithms/metaexpert/metaexpert.py`` and
``semilearn/nets/wrn/wrn_metaexpert.py``, a USB plugin built on CPE). Implemented here, with pi the class prior of the
labeled split and t = ``p_cutoff`` (0.95):

- Eq. 1, the multi-expert base L_base: CPE's three experts E_1, E_2, E_3 (long-tailed, uniform, inverse; logit
  adjustments tau_q * log pi with tau = ``cpe_tau_*`` = 0, 2, 4 on the labeled loss; each expert learns its own
  confident pseudo-labels; class-wise BN branches), exactly as ``imb_algorithm: cpe`` trains them -- the code is
  CPE's (:class:`~.cpe.ComplementaryExperts`). Expert q's logits z_q are the mean of its BN-branch logits.
- Intervals and side-labels: the classes ranked by labeled frequency (0 = most frequent) fall in the head
  (rank < ``cpe_cut1``), medium (< ``cpe_cut2``) or tail interval; a sample's side-label s is the interval of its
  class (:func:`side_labels`). Expert q serves interval q (head -> long-tailed, medium -> uniform, tail -> inverse).
- Multi-depth feature fusion (MFF): v fuses the pooled features of four depths of the encoder -- resnet18_fer's
  layer1, layer2, layer3 (64, 128, 256 channels) and its final feature (512) -- with two chains of Linear + SiLU
  layers, a_1 = phi_1(f_1), a_i = phi_i(f_i + a_(i-1)), then b_1 = psi_1(a_1), b_i = psi_i(a_i + b_(i-1)); v = b_4,
  2 x 512 wide (:class:`DepthFusion`; the layer widths follow the authors' network).
- Dynamic expert assignment (DEA, the meta-expert): an MLP on [v, z_1, z_2, z_3] (the feature and the experts'
  logits) gives the membership logits m (head, medium, tail); u = softmax(m). It learns the side-labels: CE(m, s) on
  the labeled batch, and on the unlabeled batch the side pseudo-label argmax u of the weak view, kept when max u >= t,
  learnt by the strong view's m.
- Aggregator: the meta-expert assigns each sample the expert of its most likely interval, q* = argmax u, and its
  prediction is that expert's: z_meta = z_(q*) (:func:`expert_weights`: one-hot weights w, z_meta = sum_q w_q z_q,
  :func:`aggregate`). Pseudo-labels: argmax softmax(z_meta) of the weak view, kept when its max >= t, learnt by the
  strong view's z_meta (CE). Test time: argmax z_meta (head ``meta``; results.json reports the three experts beside
  it). Each view is assigned by its own membership.
- Loss: L_base + CE_dea(labeled) + ulb_loss_ratio * (CE_dea(unlabeled) + CE_meta(unlabeled)); the meta-expert's
  and the DEA's terms from epoch ``metaexpert_start_epoch`` (0-based; default 0) on.

The paper's text was not at hand when this was written (its abstract and a third-party summary were: the
multi-expert base of Eq. 1, the DEA module on "the feature v and the logits", its side-labels, the aggregator and
MFF); where they are silent the authors' code set the choice. The authors' code differs from that description here,
each an option, the paper's the default:

- ``metaexpert_dea_input: adjusted_probs``: the DEA reads softmax(z_q + tau_q log pi), each expert's labeled-data
  prediction, instead of the logits z_q;
- ``metaexpert_aggregate: soft``: no single expert is chosen; the logits are weighted, z_meta = sum_q w_q z_q, with
  w = softmax(u_q * c_q) and c_q expert q's highest probability among the classes of its own interval; the labeled
  batch then also trains z_meta (CE of sum_q w_q (z_q + tau_q log pi), class-balanced below), through which the
  DEA learns from the classification too. The authors' class-balanced terms weigh classes and intervals by the
  effective number (1 - beta) / (1 - beta^n) (Cui et al. 2019), normalised to sum to their count:
  ``metaexpert_class_balanced: True``, beta = ``metaexpert_cb_beta`` (0.99) -- for the DEA's labeled loss as well;
- ``metaexpert_dea_mask: False``: the DEA's unlabeled loss takes every side pseudo-label (the authors compute the
  mask and leave it unused);
- ``metaexpert_start_epoch``: the authors' code switches the fused losses on after ``est_epoch + 1`` epochs
  (epoch 2 of 256 with their est_epoch = 0);
- ``metaexpert_fusion: last``: v is the final feature alone (an ablation of MFF; the authors always fuse).

Not reproduced: the authors' per-expert fused BN-branch losses (each expert's three branch logits, min-shifted and
weighted by w, learning fused pseudo-labels) and the heuristic that weighs those three losses by the type of
unlabeled distribution it guesses from expert 2's pseudo-label counts (consistent, uniform, reversed); their DEA's
SiLU after its last layer (its logits here are the last Linear's output); their extra BN + LeakyReLU before pooling
each depth (resnet18_fer's stages end in ReLU already). Their intervals are cut by class index (CIFAR's classes are
in frequency order), here by frequency rank, as CPE's branches are.

ReMoP does not compose: it replaces one linear classifier's prediction by its mixture, and Meta-Expert has four
predictions that pseudo-label (three experts and the meta-expert assigning among them); ``imb_algorithm: remop`` on
``algorithm: metaexpert`` is refused in one line (:data:`REMOP_REFUSAL`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from semilearn.algorithms.fixmatch import FixMatch
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core.utils import ALGORITHMS

from .. import pseudo_labels
from ..nets.resnet_fer import add_depth_features
from ..nets.wrapper import BackboneWrapper
from .cpe import EXPERT_KEYS, EXPERTS, ComplementaryExperts, check_expert_arguments
from .imb_common import AdaptedModels

#: the intervals, in the order of the experts that serve them (interval q -> ``EXPERTS[q]``)
INTERVALS = ("head", "medium", "tail")
AGGREGATES = ("hard", "soft")
DEA_INPUTS = ("logits", "adjusted_probs")
FUSIONS = ("multi_depth", "last")
#: widths of the DEA's hidden layers (the authors' MLP)
DEA_HIDDEN = (128, 64)
REMOP_REFUSAL = ("Meta-Expert pseudo-labels from four predictions (three experts and the meta-expert assigning "
                 "among them), and ReMoP mixes one linear classifier's; run algorithm: metaexpert without it")


# -- the math ------------------------------------------------------------------------------------------------------

def side_labels(labels: torch.Tensor, ranks: torch.Tensor, cut1: int, cut2: int) -> torch.Tensor:
    """The interval of each label's class: 0 (head) for frequency rank < cut1, 1 (medium) for rank < cut2, else 2."""
    rank = ranks.to(labels.device)[labels]
    return (rank >= cut1).long() + (rank >= cut2).long()


def effective_number_weights(counts, beta: float) -> torch.Tensor:
    """Class-balanced weights (Cui et al. 2019): (1 - beta) / (1 - beta^n_c), normalised to sum to the number of
    classes (every count >= 1)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.full_like(counts, beta), counts))
    return (weights * counts.numel() / weights.sum()).float()


def interval_confidence(expert_logits: torch.Tensor, intervals: torch.Tensor) -> torch.Tensor:
    """N x Q: c_q = expert q's highest softmax probability among the classes of its own interval q."""
    probs = torch.softmax(expert_logits.float(), dim=-1)  # N x Q x K
    own = intervals.to(probs.device)[None, None, :] == torch.arange(probs.shape[1], device=probs.device)[None, :, None]
    return probs.masked_fill(~own, float("-inf")).max(dim=-1)[0]


def expert_weights(membership_logits: torch.Tensor, expert_logits: torch.Tensor, intervals: torch.Tensor,
                   mode: str = "hard") -> torch.Tensor:
    """N x Q weights of the experts in the meta-expert's prediction. ``hard`` (paper): one-hot at
    q* = argmax u; ``soft`` (authors' code): softmax(u_q * c_q) with c the :func:`interval_confidence`."""
    if mode == "hard":
        return F.one_hot(membership_logits.argmax(dim=-1), membership_logits.shape[-1]).to(expert_logits.dtype)
    if mode == "soft":
        u = torch.softmax(membership_logits.float(), dim=-1)
        return torch.softmax(u * interval_confidence(expert_logits, intervals), dim=-1).to(expert_logits.dtype)
    raise ValueError(f"unknown aggregate {mode!r}; expected one of {AGGREGATES}")


def aggregate(expert_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """z_meta = sum_q w_q z_q: N x Q x K logits and N x Q weights -> N x K (one-hot w: the chosen expert's logits)."""
    return (weights.unsqueeze(-1) * expert_logits).sum(dim=1)


def dea_inputs(expert_logits: torch.Tensor, adjustments: torch.Tensor, kind: str = "logits") -> torch.Tensor:
    """N x (Q K): the experts' part of the DEA's input -- their logits (paper), or softmax(z_q + tau_q log pi)
    (``adjusted_probs``, authors' code); ``adjustments``: Q x K."""
    if kind == "logits":
        return expert_logits.flatten(1)
    if kind == "adjusted_probs":
        return torch.softmax(expert_logits + adjustments.to(expert_logits), dim=-1).flatten(1)
    raise ValueError(f"unknown DEA input {kind!r}; expected one of {DEA_INPUTS}")


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's masked cross-entropy: mean over the batch of CE(logits, targets) * mask."""
    return (F.cross_entropy(logits.float(), targets, reduction="none") * mask.float()).mean()


# -- the network ------------------------------------------------------------------------------------------------

def _linear_silu(width_in: int, width_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width_in, width_out), nn.SiLU())


class DepthFusion(nn.Module):
    """MFF: features of widths c_1..c_n (shallowest first) -> one of width 2 c_n, through two chains of Linear +
    SiLU layers: a_1 = phi_1(f_1), a_i = phi_i(f_i + a_(i-1)); b_1 = psi_1(a_1), b_i = psi_i(a_i + b_(i-1))."""

    def __init__(self, widths):
        super().__init__()
        widths = [int(w) for w in widths]
        outer = 2 * widths[-1]
        first = widths[1:] + [outer]  # phi_i: c_i -> c_(i+1), the last one to 2 c_n
        second = first[1:] + [outer]  # psi_i: width of a_i -> width of a_(i+1), the last one 2 c_n -> 2 c_n
        self.first = nn.ModuleList(_linear_silu(i, o) for i, o in zip(widths, first))
        self.second = nn.ModuleList(_linear_silu(i, o) for i, o in zip(first, second))
        self.out_features = outer

    @staticmethod
    def _chain(layers, inputs):
        outs, previous = [], None
        for layer, x in zip(layers, inputs):
            previous = layer(x if previous is None else x + previous)
            outs.append(previous)
        return outs

    def forward(self, feats):
        return self._chain(self.second, self._chain(self.first, feats))[-1]


class MetaExpertNet(BackboneWrapper):
    """CPE's experts network (``backbone``: :class:`~.cpe.ExpertsNet`) plus MFF and the DEA. Adds
    ``expert_logits`` (N x 3 x K: each expert's mean branch logits), ``membership`` (N x 3 logits of the head,
    medium and tail intervals), ``expert_weights`` (N x 3) and ``logits_meta`` (the meta-expert's logits)."""

    def __init__(self, experts_net: nn.Module, num_classes: int, adjustments: torch.Tensor, intervals: torch.Tensor,
                 fusion: str = "multi_depth", dea_input: str = "logits", aggregate_mode: str = "hard",
                 depth_widths=(64, 128, 256)):
        super().__init__(experts_net)
        if fusion not in FUSIONS or dea_input not in DEA_INPUTS or aggregate_mode not in AGGREGATES:
            raise ValueError(f"fusion must be one of {FUSIONS}, dea_input one of {DEA_INPUTS}, aggregate one of "
                             f"{AGGREGATES}")
        self.dea_input, self.aggregate_mode = dea_input, aggregate_mode
        self.fusion = DepthFusion(tuple(depth_widths) + (self.num_features,)) if fusion == "multi_depth" else None
        width = self.fusion.out_features if self.fusion is not None else self.num_features
        layers, previous = [], width + len(EXPERTS) * num_classes
        for hidden in DEA_HIDDEN:
            layers += [nn.Linear(previous, hidden), nn.SiLU()]
            previous = hidden
        self.dea = nn.Sequential(*layers, nn.Linear(previous, len(INTERVALS)))
        self.register_buffer("adjustments", adjustments.clone().float(), persistent=False)  # Q x K: tau_q log pi
        self.register_buffer("intervals", intervals.clone().long(), persistent=False)  # K: each class's interval

    def fused_feature(self, out):
        if self.fusion is None:
            return out["feat"]
        return self.fusion(list(out["depth_feat"]) + [out["feat"]])

    def forward(self, x, **kwargs):
        out = self.backbone(x, **kwargs)
        if not isinstance(out, dict):  # only_feat / only_fc calls pass straight through
            return out
        expert_logits = out["branch_logits"].mean(dim=2)
        features = torch.cat([self.fused_feature(out), dea_inputs(expert_logits, self.adjustments, self.dea_input)],
                             dim=1)
        out["expert_logits"] = expert_logits
        out["membership"] = self.dea(features)
        out["expert_weights"] = expert_weights(out["membership"], expert_logits, self.intervals, self.aggregate_mode)
        out["logits_meta"] = aggregate(expert_logits, out["expert_weights"])
        return out


# -- the learner -------------------------------------------------------------------------------------------------

@ALGORITHMS.register("metaexpert")
class MetaExpert(ComplementaryExperts, AdaptedModels, FixMatch):
    """Meta-Expert (Hou & Jia, ICML 2025) in FixMatch's step; see the module docstring."""

    REMOP_REFUSED = REMOP_REFUSAL  # read by ReMoP (imb_algorithm: remop), which refuses to wrap this learner
    prediction_heads = (("meta", "logits_meta"),) + tuple((name, EXPERT_KEYS[name]) for name in EXPERTS)
    #: the output keys a step's forward pass keeps (use_cat: views of one concatenated pass)
    KEYS = ("branch_logits", "feat", "expert_logits", "membership", "expert_weights", "logits_meta")

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        check_expert_arguments(args, "metaexpert")
        self.init_experts(args)
        self.fusion, self.dea_input = args.metaexpert_fusion, args.metaexpert_dea_input
        self.aggregate_mode, self.dea_mask = args.metaexpert_aggregate, bool(args.metaexpert_dea_mask)
        self.class_balanced, self.cb_beta = bool(args.metaexpert_class_balanced), float(args.metaexpert_cb_beta)
        self.start_epoch = int(args.metaexpert_start_epoch)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    # -- building ----------------------------------------------------------------------------------------------------
    def _priors(self):
        """The experts' priors and the intervals, once (the model and the EMA model are adapted alike)."""
        if getattr(self, "intervals", None) is None:
            counts = self.init_expert_priors()
            self.intervals = side_labels(torch.arange(self.num_classes), self.ranks, self.cut1, self.cut2)
            interval_counts = torch.zeros(len(INTERVALS)).index_add_(0, self.intervals, counts)
            balanced = self.class_balanced
            self.class_weights = effective_number_weights(counts, self.cb_beta) if balanced else None
            self.side_weights = effective_number_weights(interval_counts, self.cb_beta) if balanced else None

    def _adapt(self, net):
        self._priors()
        if self.fusion == "multi_depth":
            add_depth_features(net)
        return MetaExpertNet(self.experts_net(net), self.num_classes, self.adjustments, self.intervals,
                             self.fusion, self.dea_input, self.aggregate_mode)

    # -- the meta-expert's losses ------------------------------------------------------------------------------------
    def _weight(self, name, like):
        weights = getattr(self, name)
        return None if weights is None else weights.to(like.device)

    def meta_labeled_loss(self, out_lb, y_lb):
        """The DEA's CE on the side-labels of the labeled batch; with ``soft`` aggregation also CE of the meta
        logits adjusted like the experts' (sum_q w_q (z_q + tau_q log pi)) on the labels."""
        intervals = self.intervals.to(y_lb.device)
        loss = F.cross_entropy(out_lb["membership"].float(), intervals[y_lb],
                               weight=self._weight("side_weights", y_lb))
        if self.aggregate_mode == "soft":
            adjusted = out_lb["expert_logits"] + self.adjustments.to(out_lb["expert_logits"])
            loss = loss + F.cross_entropy(aggregate(adjusted, out_lb["expert_weights"]).float(), y_lb,
                                          weight=self._weight("class_weights", y_lb))
        return loss

    def meta_unlabeled_loss(self, out_w, out_s):
        """(DEA side pseudo-label CE + meta-expert pseudo-label CE on the strong view, meta mask, side mask)."""
        conf_u, side = torch.softmax(out_w["membership"].detach().float(), dim=-1).max(dim=-1)
        side_mask = (conf_u >= self.p_cutoff) if self.dea_mask else torch.ones_like(conf_u, dtype=torch.bool)
        conf, pseudo = torch.softmax(out_w["logits_meta"].detach().float(), dim=-1).max(dim=-1)
        mask = conf >= self.p_cutoff
        pseudo_labels.record(self, "metaexpert", pseudo, mask)
        loss = masked_ce(out_s["membership"], side, side_mask) + masked_ce(out_s["logits_meta"], pseudo, mask)
        return loss, mask.float().mean(), side_mask.float().mean()

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        with self.amp_cm():
            out_lb, out_w, out_s = self.forward_views(x_lb, x_ulb_w, x_ulb_s, keys=self.KEYS)
            total, stats = self.experts_loss(out_lb, y_lb, out_w, out_s)
            zero = total.new_zeros(())
            meta_sup, meta_unsup, meta_mask, side_mask = zero, zero, zero, zero  # before metaexpert_start_epoch
            if getattr(self, "epoch", 0) >= self.start_epoch:
                meta_sup = self.meta_labeled_loss(out_lb, y_lb)
                meta_unsup, meta_mask, side_mask = self.meta_unlabeled_loss(out_w, out_s)
                total = total + meta_sup + self.lambda_u * meta_unsup
        feat = {"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"], "x_ulb_s": out_s["feat"]}
        out_dict = self.process_out_dict(loss=total, feat=feat)
        # every logged number in one device-to-host copy
        *values, sup, unsup, mask, side, total_value = torch.stack(
            [t.detach().double() for t in stats + [meta_sup, meta_unsup, meta_mask, side_mask, total]]).tolist()
        log_dict = self.process_log_dict(sup_loss=sup, unsup_loss=unsup, total_loss=total_value, util_ratio=mask,
                                         metaexpert_side_mask=side)
        self.expert_log(values, log_dict, prefix="metaexpert")
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return FixMatch.get_argument() + ComplementaryExperts.expert_arguments() + [
            SSL_Argument("--metaexpert_aggregate", str, "hard",
                         f"{' | '.join(AGGREGATES)}: the meta-expert picks the expert of the most likely interval "
                         f"(hard, paper) or weighs the experts' logits (soft, authors' code)"),
            SSL_Argument("--metaexpert_dea_input", str, "logits",
                         f"{' | '.join(DEA_INPUTS)}: the experts' part of the DEA's input (adjusted_probs: "
                         f"softmax(z + tau log pi), authors' code)"),
            SSL_Argument("--metaexpert_fusion", str, "multi_depth",
                         f"{' | '.join(FUSIONS)}: the DEA's feature, fused from four depths (MFF) or the last only"),
            SSL_Argument("--metaexpert_dea_mask", str2bool, True,
                         "threshold the DEA's side pseudo-labels at p_cutoff (False: all, authors' code)"),
            SSL_Argument("--metaexpert_class_balanced", str2bool, False,
                         "effective-number class weights in the labeled meta losses (authors' code)"),
            SSL_Argument("--metaexpert_cb_beta", float, 0.99, "beta of the effective-number weights"),
            SSL_Argument("--metaexpert_start_epoch", int, 0,
                         "the DEA's and the meta-expert's losses from this epoch (0-based) on (authors' code: 2)"),
        ]

    CHOICES = {"metaexpert_aggregate": AGGREGATES, "metaexpert_dea_input": DEA_INPUTS, "metaexpert_fusion": FUSIONS}
    RANGES = {**ComplementaryExperts.EXPERT_RANGES, "metaexpert_cb_beta": "[0, 1)", "metaexpert_start_epoch": ">= 0"}
