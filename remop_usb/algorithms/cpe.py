"""CPE as a USB imbalanced algorithm: ``imb_algorithm: cpe`` on ``algorithm: fixmatch``.

Paper: Ma et al., "Three Heads Are Better Than One: Complementary Experts for Long-Tailed Semi-supervised Learning"
(CPE), AAAI 2024 (authors' code: machengcheng2016/CPE-LTSSL, a USB fork). Implemented here:

- Three experts, linear heads on the shared feature: ``long_tailed`` (the backbone's classifier), ``uniform`` and
  ``inverse``. Expert e is trained on the labeled batch with the logit-adjusted loss (Menon et al. 2021)
  CE(z_e + tau_e * log pi, y), pi the class prior of the labeled split and tau_e = 0, 2, 4 by default
  (``cpe_tau_long_tailed``, ``cpe_tau_uniform``, ``cpe_tau_inverse``): the three fit the long-tailed, a uniform
  and an inverse long-tailed class distribution.
- Each expert pseudo-labels from its own, unadjusted weak-view logits: argmax softmax, kept when the confidence is
  >= ``p_cutoff`` (FixMatch's, 0.95), and learns them with CE on its strong-view logits.
- Class-wise BatchNorm (``cpe_classwise_bn``, on by default; net ``resnet18_fer``): the layer4 feature map goes
  through three parallel BatchNorm2d branches -- head, medium, tail -- before pooling
  (:func:`remop_usb.nets.resnet_fer.add_classwise_bn`); every expert's logit is the mean of its three branch
  logits. In the unlabeled loss the head branch learns every confident pseudo-label, the medium branch only those of
  classes whose frequency rank (0 = most frequent labeled class) is >= ``cpe_cut1`` and the tail branch only those
  with rank >= ``cpe_cut2`` (:func:`branch_masks`). The classes are ranked by their labeled counts, since FER class
  indices are not in frequency order (CIFAR's, for which the authors wrote cut1/cut2 = 2/4, are).
- Loss: sum over experts of L_s^e + ulb_loss_ratio * L_u^e, where L_u^e is the sum of the masked per-branch CE
  divided by the number of (sample, branch) pairs selected -- the authors' normalisation, not FixMatch's mean over
  the batch; with no pair selected it is 0 (the authors add 1e-12 to the denominator).
- Test time: the ``uniform`` expert (``cpe_test_expert``); results.json reports it as the primary head and the two
  others beside it.

The authors' per-class precision/recall bookkeeping of pseudo-labels (logging only) is not reproduced.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core import ImbAlgorithmBase
from semilearn.core.utils import IMB_ALGORITHMS

from .. import pseudo_labels
from ..errors import UserError
from ..nets.resnet_fer import add_classwise_bn
from ..nets.wrapper import BackboneWrapper
from .imb_common import forward_batches, labeled_class_counts, log_prior, require_base_algorithm

#: the experts, in the order of their heads; the first is the backbone's own classifier
EXPERTS = ("long_tailed", "uniform", "inverse")
#: model-output key of each expert's logits (mean over the BN branches)
EXPERT_KEYS = {"long_tailed": "logits", "uniform": "logits_uniform", "inverse": "logits_inverse"}


def logit_adjustment(log_pi: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * log pi, added to an expert's labeled logits (zero for tau = 0: :func:`log_prior` is always finite)."""
    return tau * log_pi


def frequency_ranks(class_counts) -> torch.Tensor:
    """rank[c] = position of class c when the classes are sorted by decreasing count (ties: lower index first)."""
    counts = np.asarray(torch.as_tensor(class_counts).cpu(), dtype=np.float64)
    order = np.argsort(-counts, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    return torch.as_tensor(ranks, dtype=torch.long)


def branch_masks(pseudo_label: torch.Tensor, confident: torch.Tensor, ranks: torch.Tensor, cuts) -> torch.Tensor:
    """N x B float mask: sample i trains branch b when it is confident and rank[pseudo_i] >= cuts[b]."""
    rank = ranks.to(pseudo_label.device)[pseudo_label]
    return torch.stack([(rank >= cut) & confident for cut in cuts], dim=1).float()


def branch_consistency_loss(branch_logits_s: torch.Tensor, pseudo_label: torch.Tensor,
                            masks: torch.Tensor) -> torch.Tensor:
    """Sum over selected (sample, branch) pairs of CE(strong-view branch logits, pseudo-label), divided by their
    number (0 when none). ``branch_logits_s``: N x B x K, ``masks``: N x B."""
    n, b, k = branch_logits_s.shape
    ce = F.cross_entropy(branch_logits_s.reshape(n * b, k).float(), pseudo_label.repeat_interleave(b),
                         reduction="none").view(n, b)
    return (ce * masks).sum() / masks.sum().clamp(min=1.0)


class ExpertsNet(BackboneWrapper):
    """A backbone plus the ``uniform`` and ``inverse`` expert heads (the backbone's classifier is ``long_tailed``).

    Adds ``'branch_logits'`` (N x experts x BN branches x K; one branch without class-wise BN) and each expert's
    logits under :data:`EXPERT_KEYS`, the mean over its branches.
    """

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__(backbone)
        self.expert_heads = nn.ModuleDict({name: nn.Linear(self.num_features, num_classes) for name in EXPERTS[1:]})
        self.expert_dropout = self.head_dropout()  # the extra experts are regularised like the backbone's head

    def head(self, name, feat):
        if name == EXPERTS[0]:
            return self.backbone(feat, only_fc=True)
        return self.expert_heads[name](self.expert_dropout(feat))

    def forward(self, x, **kwargs):
        out = self.backbone(x, **kwargs)
        if not isinstance(out, dict):  # only_feat / only_fc calls pass straight through
            return out
        branch_feat = out.get("branch_feat", out["feat"].unsqueeze(1))
        out["branch_logits"] = torch.stack([self.head(name, branch_feat) for name in EXPERTS], dim=1)
        for e, name in enumerate(EXPERTS[1:], start=1):
            out[EXPERT_KEYS[name]] = out["branch_logits"][:, e].mean(dim=1)
        return out


def check_expert_arguments(args, who: str):
    """The keys the three experts read (hard labels; 0 < cpe_cut1 <= cpe_cut2 < num_classes), refused in one line
    naming ``who`` (the algorithm whose experts they are)."""
    if not args.hard_label:
        raise UserError(f"{who} uses hard pseudo-labels; set hard_label: True")
    if not 0 < args.cpe_cut1 <= args.cpe_cut2 < args.num_classes:
        raise UserError(f"cpe_cut1 ({args.cpe_cut1}) and cpe_cut2 ({args.cpe_cut2}) must satisfy "
                        f"0 < cut1 <= cut2 < num_classes ({args.num_classes})")


class ComplementaryExperts:
    """CPE's three experts as a mixin: the settings (:meth:`init_experts`), the network (:meth:`experts_net`), the
    forward pass over a step's three batches and each expert's labeled and unlabeled loss. Used by CPE and by
    Meta-Expert (:mod:`.metaexpert`), whose experts are CPE's."""

    def init_experts(self, args):
        """Read the experts' keys (after :func:`check_expert_arguments`); before the models exist."""
        self.taus = (float(args.cpe_tau_long_tailed), float(args.cpe_tau_uniform), float(args.cpe_tau_inverse))
        self.classwise_bn = bool(args.cpe_classwise_bn)
        self.cut1, self.cut2 = int(args.cpe_cut1), int(args.cpe_cut2)

    def init_expert_priors(self):
        """log pi, each expert's logit adjustment and the frequency ranks, from the labeled split."""
        counts = labeled_class_counts(self.dataset_dict["train_lb"].targets, self.num_classes)
        self.log_pi = log_prior(counts)
        self.adjustments = torch.stack([logit_adjustment(self.log_pi, tau) for tau in self.taus])  # experts x K
        self.ranks = frequency_ranks(counts)
        self.cuts = (0, self.cut1, self.cut2) if self.classwise_bn else (0,)
        return counts

    def experts_net(self, net):
        """``net`` with the two extra experts' heads (and, with class-wise BN, the BN branches)."""
        return ExpertsNet(add_classwise_bn(net) if self.classwise_bn else net, self.num_classes)

    def forward_views(self, x_lb, x_ulb_w, x_ulb_s, keys=("branch_logits", "feat")):
        """Model outputs for the labeled, weak and strong batches: one concatenated pass (use_cat) or three."""
        # without use_cat, FixMatch's order: labeled, strong, then the weak view without gradient
        return forward_batches(self.model, (x_lb, x_ulb_w, x_ulb_s), self.use_cat, keys, order=(0, 2, 1),
                               no_grad=(1,))

    def expert_losses(self, e, lb_branch, y_lb, w_branch, s_branch):
        """(supervised loss, unlabeled loss, N x B branch mask) of expert ``e``; inputs are N x B x K."""
        lb_logits = lb_branch.mean(dim=1)
        sup = F.cross_entropy(lb_logits + self.adjustments[e].to(lb_logits), y_lb)
        probs = self.compute_prob(w_branch.mean(dim=1).detach())
        conf, pseudo = probs.max(dim=-1)
        masks = branch_masks(pseudo, conf >= self.p_cutoff, self.ranks, self.cuts)
        if e == 0:  # the long-tailed expert's head branch learns every confident pseudo-label
            pseudo_labels.record(self, "pl", pseudo, masks[:, 0])
        return sup, branch_consistency_loss(s_branch, pseudo, masks), masks

    def experts_loss(self, out_lb, y_lb, out_w, out_s):
        """(sum over experts of L_s^e + ulb_loss_ratio * L_u^e, [L_s^e, L_u^e, head-branch mask] per expert)."""
        device = out_lb["branch_logits"].device  # moved once, then kept there (no copy per step)
        self.adjustments, self.ranks = self.adjustments.to(device), self.ranks.to(device)
        total, stats = 0.0, []
        for e in range(len(EXPERTS)):
            sup, unsup, masks = self.expert_losses(e, out_lb["branch_logits"][:, e], y_lb,
                                                   out_w["branch_logits"][:, e], out_s["branch_logits"][:, e])
            total = total + sup + self.lambda_u * unsup
            stats += [sup, unsup, masks[:, 0].mean()]
        return total, stats

    @staticmethod
    def expert_log(values, log_dict, prefix="cpe"):
        """Each expert's losses and head-branch mask (``values``: 3 per expert, as floats) into ``log_dict``; the
        (sup, unsup, mask) of each expert, by name."""
        log = {name: tuple(values[3 * e:3 * e + 3]) for e, name in enumerate(EXPERTS)}
        for name, (sup, unsup, mask) in log.items():
            log_dict[f"train/{prefix}_{name}_sup_loss"] = sup
            log_dict[f"train/{prefix}_{name}_unsup_loss"] = unsup
            log_dict[f"train/{prefix}_{name}_mask"] = mask
        return log

    @staticmethod
    def expert_arguments():
        return [
            SSL_Argument("--cpe_tau_long_tailed", float, 0.0, "logit-adjustment strength of the long-tailed expert"),
            SSL_Argument("--cpe_tau_uniform", float, 2.0, "logit-adjustment strength of the uniform expert"),
            SSL_Argument("--cpe_tau_inverse", float, 4.0, "logit-adjustment strength of the inverse expert"),
            SSL_Argument("--cpe_classwise_bn", str2bool, True, "three class-wise BN branches (net resnet18_fer)"),
            SSL_Argument("--cpe_cut1", int, 2, "frequency rank from which pseudo-labels train the medium BN branch"),
            SSL_Argument("--cpe_cut2", int, 4, "frequency rank from which pseudo-labels train the tail BN branch"),
        ]

    EXPERT_RANGES = {
        "cpe_tau_long_tailed": ">= 0",
        "cpe_tau_uniform": ">= 0",
        "cpe_tau_inverse": ">= 0",
        "cpe_cut1": ">= 1",  # and cut1 <= cut2 < num_classes (checked when the algorithm is built)
        "cpe_cut2": ">= 1",
    }


@IMB_ALGORITHMS.register("cpe")
class CPE(ComplementaryExperts, ImbAlgorithmBase):
    """Complementary experts with class-wise BN (CPE) in FixMatch's setting; see the module docstring."""

    CHOICES = {"cpe_test_expert": EXPERTS}
    RANGES = ComplementaryExperts.EXPERT_RANGES

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        require_base_algorithm(args, "cpe", ("fixmatch",))
        self.imb_init(args)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        self.init_expert_priors()
        self.model, self.ema_model = self.experts_net(self.model), self.experts_net(self.ema_model)
        self.ema_model.load_state_dict(self.model.state_dict())
        self.optimizer, self.scheduler = self.set_optimizer()
        self.prediction_heads = tuple((name, EXPERT_KEYS[name]) for name in self._head_order())

    def imb_init(self, args):
        check_expert_arguments(args, "cpe")
        self.init_experts(args)
        self.test_expert = args.cpe_test_expert

    def _head_order(self):
        return (self.test_expert,) + tuple(name for name in EXPERTS if name != self.test_expert)

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        with self.amp_cm():
            out_lb, out_w, out_s = self.forward_views(x_lb, x_ulb_w, x_ulb_s)
            total, stats = self.experts_loss(out_lb, y_lb, out_w, out_s)
        feat = {"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"], "x_ulb_s": out_s["feat"]}
        out_dict = self.process_out_dict(loss=total, feat=feat)
        # every logged number in one device-to-host copy (float64 holds each loss's value exactly)
        *values, total_value = torch.stack([t.detach().double() for t in stats + [total]]).tolist()
        log_dict = {}
        sup, unsup, mask = self.expert_log(values, log_dict)[self.test_expert]
        log_dict = {**self.process_log_dict(sup_loss=sup, unsup_loss=unsup, total_loss=total_value,
                                            util_ratio=mask), **log_dict}
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return ComplementaryExperts.expert_arguments() + [
            SSL_Argument("--cpe_test_expert", str, "uniform", f"expert used at test time: {' | '.join(EXPERTS)}"),
        ]
