"""BaCon as a USB base learner: ``algorithm: bacon`` (FixMatch w/ ABC w/ BaCon); ReMoP wraps it as ``algorithm:
bacon, imb_algorithm: remop``.

Paper: Feng, Xie, Fang & Lin, "BaCon: Boosting Imbalanced Semi-supervised Learning via Balanced Feature-Level
Contrastive Learning", AAAI 2024 (arXiv 2403.12986). Authors' port used as the reference: YaxinHou/Meta-Expert,
``semilearn/imb_algorithms/bacon/bacon.py`` and ``nets/wrn/wrn_bacon.py`` (the original repository could not be
reached from here). BaCon is a plug-in for FixMatch with ABC's auxiliary balanced classifier; implemented here:

- Network (:class:`BaConNet`): the backbone's linear classifier (FixMatch's, ``logits``), ABC's auxiliary balanced
  head (``logits_aux``, regularised like the backbone's head) and a linear projection head
  g: feature -> z (``proj``, ``bacon_proj_dim`` = 32 dimensions, the authors' port).
- FixMatch's loss on the linear head: CE on the labeled batch plus ``ulb_loss_ratio`` x CE of the strong view
  against the weak view's hard pseudo-labels, kept when max p >= ``p_cutoff``.
- ABC's loss on the auxiliary head (Lee et al., NeurIPS 2021; :func:`abc_loss`): labeled CE kept by Bernoulli(N_min /
  N_y) (:func:`remop_usb.usb_compat.abc_keep_rates`), unlabeled CE of the strong view against the auxiliary head's
  weak-view argmax, kept when its confidence is >= ``bacon_abc_p_cutoff`` and by Bernoulli(1 - (epoch / epochs) x
  (1 - N_min / N_yhat)); weight ``bacon_abc_loss_ratio``. Test time: the auxiliary head (ABC's and the authors'
  model selection); results.json reports the linear head beside it.
- Representation quality constraint: the anchors of the contrastive loss are the labeled images and the weak
  unlabeled views whose auxiliary-head confidence is >= ``bacon_p_cutoff`` (0.98), each with its label (the
  unlabeled: the auxiliary head's argmax).
- Positive anchor -- class-wise feature centers (:class:`FeatureBank`): a memory bank holds, per training image
  (labeled and unlabeled, by dataset index), its latest reliable projected feature (stored when its confidence is
  >= ``bacon_p_cutoff``) and that feature's label; the center c_k is the mean of the stored features of class k
  (:func:`class_centers`). The bank is updated after the loss (the step's loss uses the centers of earlier steps).
- Reliable negative selection, RNS (:func:`negative_mask`): the negatives of an anchor of class k are the batch's
  labeled images of another class and its unlabeled images whose auxiliary-head top-``bacon_topk`` (3) predictions
  do not contain k.
- Balanced temperature adjustment, BTA (:func:`class_temperatures`): the positive of class k is scaled by
  tau_k = tau (1 - eps (1 - t / T)^2 sqrt(n_k / max_j n_j)), tau = ``bacon_tau`` = 0.1, eps = ``bacon_tau_eps`` =
  0.005, t / T the fraction of training done, n_k the class's count: labeled images plus unlabeled images whose
  latest auxiliary-head prediction had confidence >= ``bacon_count_p_cutoff`` (0.95). The negatives keep tau.
- The loss (:func:`contrastive_loss`), over the anchors i, with cosine similarities s:
  L_con = mean_i -log( e^{s(z_i, c_{y_i}) / tau_{y_i}} / (e^{s(z_i, c_{y_i}) / tau_{y_i}} + sum_{n in N_i}
  e^{s(z_i, z_n) / tau}) ), N_i the anchor's negatives; the gradient reaches the anchors and the negatives, not the
  centers (stored features). An anchor whose class has no stored feature yet has no positive and is left out; an
  anchor without negatives has loss 0. It joins the loss from ``bacon_start`` x num_train_iter on (1/3, the
  authors' port), weighted by ``bacon_loss_ratio`` (1).
- Total: L_fixmatch + bacon_abc_loss_ratio L_abc + bacon_loss_ratio L_con.

The bank (features, their labels, the counted labels) lives in :class:`FeatureBank`, a hook whose
``checkpoint_attrs`` every checkpoint carries, so a resumed run goes on with it.

What differs in the authors' port (each an option; the default is the paper's description):

- ``bacon_negatives: scaled_mean`` -- the negatives enter the denominator as M x their mean e^{s/tau} (M =
  ``bacon_num_negatives`` = 64) instead of their sum;
- ``bacon_centers: official`` -- c_k is the mean of the bank rows of every image whose latest COUNTED label is k
  (confidence >= ``bacon_count_p_cutoff``), including rows never stored (the bank's initial all-ones vector) and rows
  stored under another label;
- its schedule constants are written for 262,144 iterations (the contrastive loss from iteration 87,381, t / T with
  T = 262,144 whatever the run's length); here both scale with num_train_iter (``bacon_start`` = 1/3);
- the paper's equations could not be read here beyond its abstract and method outline; the forms and constants of
  BTA, RNS (top-3) and the thresholds (0.98 anchors, 0.95 counts) follow the authors' port.

Under DDP each process keeps its own bank (the indices of its own batches).

With ReMoP on top (``imb_algorithm: remop``): BaCon has one linear classifier with FixMatch's pseudo-label path, as
ACR does beside its balanced head; ReMoP's mixture (Eq. 6) of that classifier and the feature prediction takes the
place of softmax(z_w) in FixMatch's mask and pseudo-labels. ABC's auxiliary head and the contrastive loss keep the
auxiliary head's own softmax (they read another head). ReMoP's mixture is then the test-time prediction (model
selection); results.json and the log report beside it the linear head (``linear``) and BaCon's own test-time
prediction, the auxiliary head (``aux``, as without ReMoP).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from semilearn.algorithms.fixmatch import FixMatch
from semilearn.algorithms.utils import SSL_Argument
from semilearn.core.hooks import Hook
from semilearn.core.utils import ALGORITHMS

from .. import pseudo_labels
from ..errors import UserError
from ..nets.wrapper import BackboneWrapper
from ..usb_compat import abc_keep_rates
from .imb_common import AdaptedModels, forward_batches, labeled_class_counts

NEGATIVES = ("sum", "scaled_mean")
CENTERS = ("stored", "official")


# -- the math ------------------------------------------------------------------------------------------------------

def class_temperatures(tau: float, eps: float, progress: float, counts: torch.Tensor) -> torch.Tensor:
    """BTA: tau_k = tau (1 - eps (1 - progress)^2 sqrt(n_k / max_j n_j)) for the class counts n (all ones when no
    class is counted yet)."""
    counts = counts.double()
    top = counts.max()
    share = counts / top if top > 0 else torch.ones_like(counts)
    return (tau * (1.0 - eps * (1.0 - progress) ** 2 * share.sqrt())).float()


def negative_mask(y_lb: torch.Tensor, topk_ulb: torch.Tensor, num_classes: int) -> torch.Tensor:
    """RNS: an (N_lb + N_ulb) x K boolean matrix, True where the row is a negative of the class: a labeled row of
    another class, an unlabeled row whose top-k predictions (``topk_ulb``: N_ulb x k class indices) leave it out."""
    classes = torch.arange(num_classes, device=y_lb.device)
    labeled = y_lb.unsqueeze(1) != classes.unsqueeze(0)
    in_topk = torch.zeros(topk_ulb.shape[0], num_classes, dtype=torch.bool, device=y_lb.device)
    in_topk.scatter_(1, topk_ulb.to(y_lb.device), True)
    return torch.cat([labeled, ~in_topk])


def class_centers(feats: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(K x d means of the rows of each label, K booleans: the class has a row); rows labeled -1 count nowhere."""
    known = labels >= 0
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, labels[known], feats[known].double())
    counts = torch.bincount(labels[known], minlength=num_classes).to(feats.device)
    centers = sums / counts.clamp_min(1).unsqueeze(1).double()
    return centers.float(), counts > 0


def contrastive_loss(z: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, centers: torch.Tensor,
                     has_center: torch.Tensor, negatives: torch.Tensor, tau_k: torch.Tensor, tau: float,
                     num_negatives: int = 0) -> torch.Tensor:
    """The BaCon loss of the rows ``z`` (N x d) whose ``anchors`` (N booleans) are set, each of class ``labels``:
    the mean over those anchors whose class ``has_center`` of -log(e^p / (e^p + S)), with p = cos(z_i, c_{y_i}) /
    tau_{y_i} and S = sum over the anchor's negatives n (``negatives``: N x K, row n a negative of class k) of
    e^{cos(z_i, z_n) / tau} -- or, with ``num_negatives`` = M > 0, M times their mean. 0 without such anchors."""
    kept = anchors & has_center[labels]
    if not kept.any():
        return z.sum() * 0.0
    unit = F.normalize(z.float(), dim=1)
    idx = kept.nonzero().flatten()
    y = labels[idx]
    positive = (unit[idx] * F.normalize(centers.to(unit), dim=1)[y]).sum(dim=1) / tau_k.to(unit)[y]
    is_negative = negatives[:, y].t()  # anchor x row
    similarity = (unit[idx] @ unit.t() / tau).masked_fill(~is_negative, float("-inf"))
    denominator = torch.logsumexp(similarity, dim=1)
    if num_negatives > 0:  # M x mean = exp(log M + logsumexp - log count)
        count = is_negative.sum(dim=1).clamp_min(1)
        denominator = denominator + math.log(num_negatives) - count.float().log()
    return (torch.logaddexp(positive, denominator) - positive).mean()


def abc_masks(rates: torch.Tensor, y_lb: torch.Tensor, conf_w: torch.Tensor, pseudo: torch.Tensor,
              p_cutoff: float, progress: float):
    """ABC's Bernoulli masks: labeled rows kept with probability rates[y]; unlabeled rows with confidence >=
    ``p_cutoff``, kept with probability 1 - progress x (1 - rates[pseudo]) (progress: epoch / epochs)."""
    rates = rates.to(conf_w.device)
    mask_lb = torch.bernoulli(rates[y_lb].float())
    keep_ulb = 1.0 - progress * (1.0 - rates[pseudo].float())
    mask_ulb = (conf_w >= p_cutoff).float() * torch.bernoulli(keep_ulb.clamp(0.0, 1.0))
    return mask_lb, mask_ulb


# -- the network and the bank --------------------------------------------------------------------------------------

class BaConNet(BackboneWrapper):
    """A backbone plus ABC's auxiliary balanced head (``logits_aux``) and BaCon's projection head (``proj``)."""

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int):
        super().__init__(backbone)
        self.aux_classifier = nn.Linear(self.num_features, num_classes)
        self.aux_dropout = self.head_dropout()
        self.projection = nn.Linear(self.num_features, proj_dim)

    def forward(self, x, **kwargs):
        out = self.backbone(x, **kwargs)
        if not isinstance(out, dict):  # only_feat / only_fc calls pass straight through
            return out
        out["logits_aux"] = self.aux_classifier(self.aux_dropout(out["feat"]))
        out["proj"] = self.projection(out["feat"])
        return out


class FeatureBank(Hook):
    """BaCon's memory bank over the training images (labeled rows first, then unlabeled, by dataset index): the
    latest reliable projected feature of each, the label it was stored with (-1: none), and the latest counted
    label (labeled: its label; unlabeled: a prediction with confidence >= the count threshold; -1: none)."""

    checkpoint_attrs = ("feats", "stored_labels", "counted_labels")

    def __init__(self, num_lb: int, num_ulb: int, dim: int, num_classes: int):
        self.num_lb, self.num_classes = int(num_lb), int(num_classes)
        size = self.num_lb + int(num_ulb)
        self.feats = torch.ones(size, dim)  # the authors' initial rows (read only by bacon_centers: official)
        self.stored_labels = torch.full((size,), -1, dtype=torch.long)
        self.counted_labels = torch.full((size,), -1, dtype=torch.long)

    def rows(self, idx_lb: torch.Tensor, idx_ulb: torch.Tensor) -> torch.Tensor:
        return torch.cat([idx_lb.long(), idx_ulb.long() + self.num_lb])

    def to(self, device):
        self.feats, self.stored_labels, self.counted_labels = (
            t.to(device) for t in (self.feats, self.stored_labels, self.counted_labels))
        return self

    def centers(self, mode: str):
        """(K x d centers, K booleans: defined) -- ``stored``: of the stored features by their stored labels;
        ``official``: of the rows by their counted labels."""
        labels = self.stored_labels if mode == "stored" else self.counted_labels
        return class_centers(self.feats, labels, self.num_classes)

    def class_counts(self) -> torch.Tensor:
        known = self.counted_labels[self.counted_labels >= 0]
        return torch.bincount(known, minlength=self.num_classes)

    @torch.no_grad()
    def update(self, rows, z, labels, store, count):
        """Store the features ``z`` of the rows with ``store`` under ``labels``; count those with ``count``."""
        self.to(z.device)
        self.feats[rows[store]] = z[store].detach().float()
        self.stored_labels[rows[store]] = labels[store]
        self.counted_labels[rows[count]] = labels[count]


# -- the learner -----------------------------------------------------------------------------------------------------

@ALGORITHMS.register("bacon")
class BaCon(AdaptedModels, FixMatch):
    """BaCon (Feng et al., AAAI 2024) on FixMatch w/ ABC; see the module docstring."""

    prediction_heads = (("aux", "logits_aux"), ("linear", "logits"))

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        if not args.hard_label:
            raise UserError("bacon uses hard pseudo-labels (FixMatch's and ABC's); set hard_label: True")
        if not 1 <= args.bacon_topk <= args.num_classes:
            raise UserError(f"bacon_topk must be between 1 and num_classes ({args.num_classes}), got {args.bacon_topk}")
        self.bacon_proj_dim = int(args.bacon_proj_dim)
        self.abc_p_cutoff, self.abc_ratio = float(args.bacon_abc_p_cutoff), float(args.bacon_abc_loss_ratio)
        # the anchors' threshold, per set (one key; two attributes, so a test can open one set alone)
        self.bacon_lb_cutoff = self.bacon_ulb_cutoff = float(args.bacon_p_cutoff)
        self.bacon_count_cutoff, self.bacon_topk = float(args.bacon_count_p_cutoff), int(args.bacon_topk)
        self.bacon_tau, self.bacon_tau_eps = float(args.bacon_tau), float(args.bacon_tau_eps)
        self.bacon_start, self.bacon_ratio = float(args.bacon_start), float(args.bacon_loss_ratio)
        self.bacon_negatives, self.bacon_num_negatives = args.bacon_negatives, int(args.bacon_num_negatives)
        self.bacon_centers = args.bacon_centers
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    # -- building ----------------------------------------------------------------------------------------------------
    def _adapt(self, net):
        return BaConNet(net, self.num_classes, self.bacon_proj_dim)

    def set_hooks(self):
        targets = self.dataset_dict["train_lb"].targets
        self.abc_rates = abc_keep_rates(labeled_class_counts(targets, self.num_classes))
        bank = FeatureBank(len(self.dataset_dict["train_lb"]), len(self.dataset_dict["train_ulb"]),
                           self.bacon_proj_dim, self.num_classes)
        self.register_hook(bank, "BaConBank")
        super().set_hooks()

    @property
    def bank(self) -> FeatureBank:
        return self.hooks_dict["BaConBank"]

    # -- the losses --------------------------------------------------------------------------------------------------
    def abc_loss(self, logits_lb, y_lb, logits_w, logits_s):
        """ABC's loss on the auxiliary head (the module docstring); its unlabeled rows are reported as ``abc``."""
        conf, pseudo = torch.softmax(logits_w.detach().float(), dim=-1).max(dim=-1)
        progress = getattr(self, "epoch", 0) / self.epochs
        mask_lb, mask_ulb = abc_masks(self.abc_rates, y_lb, conf, pseudo, self.abc_p_cutoff, progress)
        pseudo_labels.record(self, "abc", pseudo, mask_ulb)
        lb = (F.cross_entropy(logits_lb, y_lb, reduction="none") * mask_lb).mean()
        ulb = (F.cross_entropy(logits_s, pseudo, reduction="none") * mask_ulb).mean()
        return lb + ulb

    def bacon_loss(self, z_lb, z_ulb, y_lb, aux_lb, aux_w):
        """BaCon's contrastive loss of one step (the module docstring), or 0 before ``bacon_start``; its unlabeled
        anchors are reported as ``bacon``. Returns (loss, anchors' labels, reliable rows, counted rows)."""
        probs_lb = torch.softmax(aux_lb.detach().float(), dim=-1)
        probs_w = torch.softmax(aux_w.detach().float(), dim=-1)
        conf_w, pred_w = probs_w.max(dim=-1)
        labels = torch.cat([y_lb, pred_w])
        reliable = torch.cat([probs_lb.max(dim=-1)[0] >= self.bacon_lb_cutoff, conf_w >= self.bacon_ulb_cutoff])
        counted = torch.cat([torch.ones_like(y_lb, dtype=torch.bool), conf_w >= self.bacon_count_cutoff])
        pseudo_labels.record(self, "bacon", pred_w, reliable[len(y_lb):])
        z = torch.cat([z_lb, z_ulb])
        if self.it < self.bacon_start * self.num_train_iter:
            return z.sum() * 0.0, labels, reliable, counted
        centers, has_center = self.bank.to(z.device).centers(self.bacon_centers)
        progress = self.it / self.num_train_iter
        tau_k = class_temperatures(self.bacon_tau, self.bacon_tau_eps, progress, self.bank.class_counts())
        negatives = negative_mask(y_lb, probs_w.topk(self.bacon_topk, dim=-1)[1], self.num_classes)
        scale = self.bacon_num_negatives if self.bacon_negatives == "scaled_mean" else 0
        loss = contrastive_loss(z, labels, reliable, centers, has_center, negatives, tau_k, self.bacon_tau, scale)
        return loss, labels, reliable, counted

    # -- one step ----------------------------------------------------------------------------------------------------
    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s, idx_lb, idx_ulb):
        with self.amp_cm():
            # without use_cat, FixMatch's order: labeled, strong, then the weak view without gradient
            out_lb, out_w, out_s = forward_batches(self.model, (x_lb, x_ulb_w, x_ulb_s), self.use_cat,
                                                   ("logits", "logits_aux", "proj", "feat"), order=(0, 2, 1),
                                                   no_grad=(1,))
            sup_loss = self.ce_loss(out_lb["logits"], y_lb, reduction="mean")
            probs = self.compute_prob(out_w["logits"].detach())  # ReMoP: its mixture
            conf, pseudo = probs.max(dim=-1)
            mask = (conf >= self.p_cutoff).float()
            unsup_loss = self.consistency_loss(out_s["logits"], pseudo, "ce", mask=mask)
            abc = self.abc_loss(logits_lb=out_lb["logits_aux"], y_lb=y_lb, logits_w=out_w["logits_aux"],
                                logits_s=out_s["logits_aux"])
            con, labels, reliable, counted = self.bacon_loss(z_lb=out_lb["proj"], z_ulb=out_w["proj"], y_lb=y_lb,
                                                             aux_lb=out_lb["logits_aux"], aux_w=out_w["logits_aux"])
            total_loss = sup_loss + self.lambda_u * unsup_loss + self.abc_ratio * abc + self.bacon_ratio * con
        z = torch.cat([out_lb["proj"], out_w["proj"]])
        self.bank.update(self.bank.rows(idx_lb, idx_ulb).to(z.device), z, labels, reliable, counted)
        feat = {"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"], "x_ulb_s": out_s["feat"]}
        out_dict = self.process_out_dict(loss=total_loss, feat=feat)
        log_dict = self.process_log_dict(sup_loss=sup_loss.item(), unsup_loss=unsup_loss.item(),
                                         total_loss=total_loss.item(), util_ratio=mask.mean().item(),
                                         abc_loss=abc.item(), bacon_loss=con.item(),
                                         bacon_anchors=reliable.float().sum().item())
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return FixMatch.get_argument() + [
            SSL_Argument("--bacon_abc_p_cutoff", float, 0.95, "ABC: confidence threshold of the auxiliary head"),
            SSL_Argument("--bacon_abc_loss_ratio", float, 1.0, "ABC: weight of the auxiliary head's loss"),
            SSL_Argument("--bacon_proj_dim", int, 32, "dimensions of the projection head (authors' port: 32)"),
            SSL_Argument("--bacon_p_cutoff", float, 0.98,
                         "auxiliary-head confidence of an anchor, and of a feature the bank stores"),
            SSL_Argument("--bacon_count_p_cutoff", float, 0.95,
                         "auxiliary-head confidence of an unlabeled image counted in BTA's class counts"),
            SSL_Argument("--bacon_topk", int, 3, "RNS: an unlabeled image is a negative of the classes outside its "
                                                 "top-k predictions"),
            SSL_Argument("--bacon_tau", float, 0.1, "tau: temperature of the contrastive loss"),
            SSL_Argument("--bacon_tau_eps", float, 0.005, "BTA: tau_k = tau (1 - eps (1 - t/T)^2 sqrt(n_k / n_max))"),
            SSL_Argument("--bacon_start", float, 1.0 / 3.0,
                         "the contrastive loss from this fraction of num_train_iter on (authors' port: 1/3)"),
            SSL_Argument("--bacon_loss_ratio", float, 1.0, "weight of the contrastive loss"),
            SSL_Argument("--bacon_negatives", str, "sum",
                         f"{' | '.join(NEGATIVES)}: the negatives' sum (paper), or M x their mean (authors' port)"),
            SSL_Argument("--bacon_num_negatives", int, 64, "M of bacon_negatives: scaled_mean"),
            SSL_Argument("--bacon_centers", str, "stored",
                         f"{' | '.join(CENTERS)}: means of the stored features by their labels (paper), or of the "
                         f"bank rows by the latest counted labels (authors' port)"),
        ]

    CHOICES = {"bacon_negatives": NEGATIVES, "bacon_centers": CENTERS}
    RANGES = {
        "bacon_abc_p_cutoff": "[0, 1]",
        "bacon_abc_loss_ratio": ">= 0",
        "bacon_proj_dim": ">= 1",
        "bacon_p_cutoff": "[0, 1]",
        "bacon_count_p_cutoff": "[0, 1]",
        "bacon_topk": ">= 1",  # and <= num_classes (checked when the algorithm is built)
        "bacon_tau": "> 0",
        "bacon_tau_eps": "[0, 1)",  # tau_k > 0
        "bacon_start": "[0, 1]",
        "bacon_loss_ratio": ">= 0",
        "bacon_num_negatives": ">= 1",
    }
