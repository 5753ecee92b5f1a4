"""Ada-CM as a USB base learner: ``algorithm: adacm``.

Paper: Li, Wang, Yang, Wang, Gao, "Towards Semi-Supervised Deep Facial Expression Recognition with An Adaptive
Confidence Margin", CVPR 2022 (authors' code: hangyu94/Ada-CM). Implemented here:

- Backbone: the 512-d feature is L2-normalised before the linear classifier (``adacm_normalize_feat``), as in the
  authors' network; the contrastive term works on these unit features.
- Supervised term L_s: cross-entropy on the weakly augmented labeled batch.
- Unlabeled confidence: two weak views a, b of each unlabeled image are forwarded (with gradient);
  p~ = (p_a + p_b) / 2, confidence max p~, pseudo-label argmax p~.
- Adaptive confidence margin (one per class c, learned from labeled data): at the end of epoch t,
  T_c = max(floor, lambda(t) * mean{ max p_i : labeled i of class c predicted correctly }) with the sigmoid
  ramp-up lambda(t) = scale / (1 + exp(-rate * t)) (scale 0.97, rate 1, t = completed epochs); a class without
  a correctly predicted labeled sample gets the floor (0.8), which is also every margin's initial value.
- Subset I (max p~ >= T_{argmax p~}): L_u = CE(strong-view logits, pseudo-label) (averaged over the whole
  unlabeled batch, as FixMatch's).
- Subset II (max p~ < T_{argmax p~}): L_c, the SimCLR NT-Xent loss between the two weak views' unit features of
  those samples (temperature 0.07; each view's positive is the other view, its negatives the other 2n - 2 views).
- L = lambda_s * L_s + lambda_u * L_u + lambda_c * L_c with the released code's weights 0.5, 1 (USB's
  ``ulb_loss_ratio``) and 0.1.

The margins and the epoch's running statistics are attributes of the masking hook, so checkpoints carry them
(``usb_compat.checkpointing`` saves every hook's tensors) and a resumed run continues with them.

Where the labeled confidences come from (``adacm_margin_source``):
- ``train`` (default, the paper: "in each forward pass the labeled samples' confidence scores are put into the
  confidence margin"): the labeled predictions of every training step of the epoch (live model, train mode);
- ``ema`` (released code): after each epoch, one pass of the EMA model in eval mode over the weakly augmented
  labeled set.

Every probability (labeled confidences, both weak views, the EMA pass) comes from ``self.compute_prob``, so that an
imbalanced wrapper overriding it -- ReMoP's mixture of predictions -- replaces them all consistently; the margins
are then learned on the same scale the unlabeled confidences are compared on. Degenerate batches stay finite: no
sample in subset I gives L_u = 0, fewer than two views in subset II give L_c = 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from semilearn.algorithms.hooks import MaskingHook, PseudoLabelingHook
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core.algorithmbase import AlgorithmBase
from semilearn.core.utils import ALGORITHMS
from torch.utils.data import DataLoader

from ..evaluation import eval_mode
from ..nets.wrapper import BackboneWrapper
from ..usb_compat import device_of
from ..usb_compat.unlabeled_views import with_second_weak_view
from .imb_common import AdaptedModels, forward_batches, sum_over_processes

MARGIN_SOURCES = ("train", "ema")


# -- the math ------------------------------------------------------------------------------------------------------

def ramp_up(epoch: float, scale: float = 0.97, rate: float = 1.0) -> float:
    """lambda(t) = scale / (1 + exp(-rate * t))."""
    return scale / (1.0 + math.exp(-rate * epoch))


def correct_confidence_stats(probs: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per class c: (sum, count) of max p_i over labeled samples of class c whose argmax p_i is c."""
    conf, pred = probs.float().max(dim=1)
    correct = pred == labels
    sums = torch.zeros(num_classes, dtype=torch.float64, device=probs.device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=probs.device)
    # every sample added, the others as exact zeros: the same sums as over the correct ones, without the host sync
    # of boolean indexing
    sums.index_add_(0, labels, torch.where(correct, conf.double(), 0.0))
    counts.index_add_(0, labels, correct.double())
    return sums, counts


def adaptive_margins(sums, counts, epoch, scale=0.97, rate=1.0, floor=0.8) -> torch.Tensor:
    """T_c = max(floor, ramp_up(epoch) * sums_c / counts_c); ``floor`` where counts_c = 0."""
    mean = sums / counts.clamp(min=1)
    margins = (mean * ramp_up(epoch, scale, rate)).clamp(min=floor)
    return torch.where(counts > 0, margins, torch.full_like(margins, floor)).float()


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SimCLR's NT-Xent over n pairs of views (rows of ``z_a``, ``z_b``), on L2-normalised features.

    Each of the 2n views is an anchor; its positive is the other view of its sample, the softmax runs over the
    2n - 1 other views; the loss is the mean over anchors. 0 for n = 0 (and exactly 0 for n = 1).
    """
    n = z_a.shape[0]
    if n == 0:
        return z_a.sum() * 0.0
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    return F.cross_entropy(sim, positives)


# -- the margin: a masking hook ------------------------------------------------------------------------------------

class AdaptiveMarginHook(MaskingHook):
    """Ada-CM's per-class confidence margins: the mask of subset I, learned from labeled confidences per epoch."""

    #: what a checkpoint keeps of this hook (the rest comes from the config)
    checkpoint_attrs = ("margins", "sums", "counts")

    def __init__(self, num_classes, init=0.8, floor=0.8, scale=0.97, rate=1.0, source="train"):
        super().__init__()
        if source not in MARGIN_SOURCES:
            raise ValueError(f"adacm_margin_source must be one of {MARGIN_SOURCES}, got {source!r}")
        self.num_classes, self.floor, self.scale, self.rate, self.source = num_classes, floor, scale, rate, source
        self.margins = torch.full((num_classes,), float(init))
        self.reset_stats()

    def reset_stats(self):
        self.sums = torch.zeros(self.num_classes, dtype=torch.float64)
        self.counts = torch.zeros(self.num_classes, dtype=torch.float64)

    @torch.no_grad()
    def masking(self, algorithm, logits_x_ulb, softmax_x_ulb=True, *args, **kwargs):
        """1 for subset I: max p >= T_{argmax p}; 0 for subset II."""
        probs = algorithm.compute_prob(logits_x_ulb.detach()) if softmax_x_ulb else logits_x_ulb.detach()
        conf, pred = probs.max(dim=-1)
        self.margins = self.margins.to(probs.device)
        return conf.ge(self.margins[pred]).to(probs.dtype)

    @torch.no_grad()
    def observe_labeled(self, algorithm, probs_x_lb, y_lb):
        """Accumulate the labeled confidences of one training step (``source: train``)."""
        if self.source == "train":
            self._add(*correct_confidence_stats(probs_x_lb.detach(), y_lb, self.num_classes))

    def _add(self, sums, counts):
        self.sums = self.sums.to(sums.device) + sums
        self.counts = self.counts.to(counts.device) + counts

    def after_train_epoch(self, algorithm):
        if self.source == "ema":
            self.reset_stats()
            for probs, labels in algorithm.ema_labeled_probs():
                self._add(*correct_confidence_stats(probs, labels, self.num_classes))
        sums, counts = sum_over_processes(algorithm, self.sums.clone(), self.counts.clone())
        self.margins = adaptive_margins(sums, counts, algorithm.epoch + 1, self.scale, self.rate, self.floor)
        self.reset_stats()


# -- the network: unit features before the classifier --------------------------------------------------------------

class NormalizedFeatureNet(BackboneWrapper):
    """A USB backbone whose feature is L2-normalised before its classifier (Ada-CM's network)."""

    def forward(self, x, only_fc=False, only_feat=False, **kwargs):
        if only_fc:
            return self.backbone(x, only_fc=True)
        feat = F.normalize(self.backbone(x, only_feat=True, **kwargs), dim=1)
        if only_feat:
            return feat
        return {**self.head_of(feat), "feat": feat}


# -- the learner -----------------------------------------------------------------------------------------------------

@ALGORITHMS.register("adacm")
class AdaCM(AdaptedModels, AlgorithmBase):
    """Ada-CM (Li et al., CVPR 2022): adaptive per-class confidence margins; CE on subset I, NT-Xent on subset II."""

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        self.init(args)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    def init(self, args):
        self.normalize_feat = args.adacm_normalize_feat
        self.temperature = args.adacm_temperature
        self.sup_weight = args.adacm_sup_weight
        self.contrast_weight = args.adacm_contrast_weight

    # -- building ----------------------------------------------------------------------------------------------------
    def _adapt(self, net):
        return NormalizedFeatureNet(net) if self.normalize_feat else net

    def set_dataset(self):
        dataset_dict = super().set_dataset()
        dataset_dict["train_ulb"] = with_second_weak_view(dataset_dict["train_ulb"])
        return dataset_dict

    def set_hooks(self):
        a = self.args
        self.register_hook(PseudoLabelingHook(), "PseudoLabelingHook")
        self.register_hook(AdaptiveMarginHook(self.num_classes, a.adacm_init_margin, a.adacm_margin_floor,
                                              a.adacm_margin_scale, a.adacm_ramp_rate, a.adacm_margin_source),
                           "MaskingHook")
        super().set_hooks()

    # -- one step ----------------------------------------------------------------------------------------------------
    def _forward(self, *batches):
        """Logits and features of each batch: one forward over their concatenation (use_cat) or one each."""
        outs = forward_batches(self.model, batches, self.use_cat, ("logits", "feat"))
        return [(o["logits"], o["feat"]) for o in outs]

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_w_2, x_ulb_s):
        with self.amp_cm():
            (logits_lb, feat_lb), (logits_a, feat_a), (logits_b, feat_b), (logits_s, feat_s) = \
                self._forward(x_lb, x_ulb_w, x_ulb_w_2, x_ulb_s)
            sup_loss = self.ce_loss(logits_lb, y_lb, reduction="mean")
            self.call_hook("observe_labeled", "MaskingHook", probs_x_lb=self.compute_prob(logits_lb.detach()),
                           y_lb=y_lb)
            probs = 0.5 * (self.compute_prob(logits_a.detach()) + self.compute_prob(logits_b.detach()))
            mask = self.call_hook("masking", "MaskingHook", logits_x_ulb=probs, softmax_x_ulb=False)
            pseudo_label = self.call_hook("gen_ulb_targets", "PseudoLabelingHook", logits=probs,
                                          use_hard_label=True, softmax=False)
            unsup_loss = self.consistency_loss(logits_s, pseudo_label, "ce", mask=mask)
            low = mask == 0
            contrast_loss = nt_xent(feat_a[low], feat_b[low], self.temperature)
            total_loss = self.sup_weight * sup_loss + self.lambda_u * unsup_loss + self.contrast_weight * contrast_loss
        out_dict = self.process_out_dict(loss=total_loss, feat={"x_lb": feat_lb, "x_ulb_w": feat_a,
                                                                "x_ulb_w_2": feat_b, "x_ulb_s": feat_s})
        log_dict = self.process_log_dict(sup_loss=sup_loss.item(), unsup_loss=unsup_loss.item(),
                                         contrast_loss=contrast_loss.item(), total_loss=total_loss.item(),
                                         util_ratio=mask.float().mean().item(),
                                         adacm_margin_mean=self.hooks_dict["MaskingHook"].margins.mean().item())
        return out_dict, log_dict

    # -- the released code's margin source: an EMA pass over the labeled set ----------------------------------------
    @torch.no_grad()
    def ema_labeled_probs(self):
        """(probabilities, labels) per batch of the EMA model (eval mode) over the weakly augmented labeled set."""
        loader = DataLoader(self.dataset_dict["train_lb"], batch_size=self.args.eval_batch_size, shuffle=False,
                            num_workers=self.args.num_workers)
        device = device_of(self)
        with eval_mode(self.ema_model, self) as model:
            for data in loader:
                out = model(data["x_lb"].to(device))
                yield self.compute_prob(out["logits"]), data["y_lb"].to(device)

    @staticmethod
    def get_argument():
        return [
            SSL_Argument("--adacm_init_margin", float, 0.8, "initial confidence margin of every class"),
            SSL_Argument("--adacm_margin_floor", float, 0.8, "lower bound of a learned margin"),
            SSL_Argument("--adacm_margin_scale", float, 0.97, "ramp-up lambda(t) = scale / (1 + exp(-rate t))"),
            SSL_Argument("--adacm_ramp_rate", float, 1.0, "rate of the ramp-up, per epoch"),
            SSL_Argument("--adacm_margin_source", str, "train",
                         "labeled confidences: train (paper: training steps) | ema (released code: EMA pass)"),
            SSL_Argument("--adacm_temperature", float, 0.07, "NT-Xent temperature of the subset-II term"),
            SSL_Argument("--adacm_sup_weight", float, 0.5, "weight of the supervised term"),
            SSL_Argument("--adacm_contrast_weight", float, 0.1, "weight of the subset-II contrastive term"),
            SSL_Argument("--adacm_normalize_feat", str2bool, True, "L2-normalise the feature before the classifier"),
        ]

    CHOICES = {"adacm_margin_source": MARGIN_SOURCES}
    RANGES = {
        "adacm_init_margin": "[0, 1]",  # margins are on the confidence max p
        "adacm_margin_floor": "[0, 1]",
        "adacm_margin_scale": "[0, 1]",
        "adacm_ramp_rate": ">= 0",
        "adacm_temperature": "> 0",
        "adacm_sup_weight": ">= 0",
        "adacm_contrast_weight": ">= 0",
    }
