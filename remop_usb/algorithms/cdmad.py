"""CDMAD as a USB base learner: ``algorithm: cdmad`` (FixMatch's step with CDMAD's debiasing); ReMoP wraps it as
``algorithm: cdmad, imb_algorithm: remop``.

Paper: Lee & Kim, "CDMAD: Class-Distribution-Mismatch-Aware Debiasing for Class-Imbalanced Semi-Supervised
Learning", CVPR 2024 (authors' code: LeeHyuck/CDMAD, ``fixmatchcdmad.py``). Implemented here:

- The classifier's bias toward each class is measured as its logits g(I) on a pattern-free image I -- a solid image,
  every input value ``cdmad_fill`` (the authors: ``torch.ones``, i.e. 1.0 in the network's normalised input space),
  of the size of the batch's images (:func:`solid_image`).
- Pseudo-labelling (Sec. 3, the refined pseudo-label): the weak view's logits are debiased before the softmax,
  p = softmax(g(x_w) - g(I)), with g(I) measured by the training model at this step; FixMatch's rule follows --
  the pseudo-label argmax p, kept when max p >= ``p_cutoff`` (with ``hard_label: False``, p itself is the target,
  not sharpened: USB 0.3.2's FixMatch ignores ``T`` too, its soft target being ``compute_prob``'s probabilities).
  The debiasing starts at epoch ``cdmad_debias_start`` (0-based; 0: from the first step; the authors' CIFAR code:
  after epoch 100 of 500, ``epoch > debiasstart``, i.e. 101 here); before that the pseudo-labels are FixMatch's.
- Test time (the refined prediction): argmax of g(x) - g(I), g(I) measured by the evaluated (EMA) model in eval mode
  (:class:`SolidImageBiasNet`'s ``logits_debiased``); results.json reports the raw logits beside it.
- Everything else is FixMatch's: CE on the labeled batch, CE of the strong view against the pseudo-labels, weighted
  by ``ulb_loss_ratio``. CDMAD keeps no state beyond the model (g(I) is measured afresh each time).

What differs from the authors' code:

- g(I) for pseudo-labelling is measured in eval mode (BatchNorm's running statistics, no dropout); the authors run
  the single solid image through the model in train mode, so BatchNorm normalises it with its own statistics and
  also moves the running statistics toward it. In train mode a 1x1 final feature map (32-pixel inputs) cannot be
  normalised at all, and resnet18_fer's head dropout would make the bias a random draw;
- the authors' FixMatch+CDMAD uses the debiased softmax as a soft target with no threshold (tau = 0); the defaults
  here are FixMatch's (hard labels, 0.95) -- ``hard_label: False`` and ``p_cutoff: 0`` give theirs;
- one strong view per unlabeled image (the authors use two).

With ReMoP on top (``imb_algorithm: remop``): the pseudo-labels come from ReMoP's mixture (Eq. 6) of the debiased
linear prediction and the unchanged feature prediction s, beta softmax(z_w - g(I)) + (1 - beta) s (``remop_mix:
logit``: softmax(beta (z_w - g(I)) + (1 - beta) s); :func:`~.imb_common.adjusted_prediction`). g(I) is the linear
classifier's bias; the feature prediction (cosines to the class centers) is on no logit scale and is not shifted. ReMoP's mixture is then the test-time prediction (ReMoP's
rule, model selection); results.json and the log report beside it the linear logits (``linear``) and CDMAD's own
test-time prediction, the debiased logits (``debiased``, as without ReMoP).
"""

from __future__ import annotations

import torch
from semilearn.algorithms.fixmatch import FixMatch
from semilearn.algorithms.utils import SSL_Argument
from semilearn.core.utils import ALGORITHMS

from ..evaluation import eval_mode
from ..nets.wrapper import BackboneWrapper
from .imb_common import AdaptedModels, adjusted_prediction, forward_batches


def solid_image(like: torch.Tensor, fill: float) -> torch.Tensor:
    """One pattern-free image shaped like a row of the batch ``like`` (C x H x W), every value ``fill``."""
    return torch.full((1, *like.shape[1:]), float(fill), dtype=like.dtype, device=like.device)


def debiased_logits(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """g(x) - g(I): ``bias`` (1 x K or K) subtracted from every row."""
    return logits - bias.reshape(1, -1).to(logits)


class SolidImageBiasNet(BackboneWrapper):
    """A backbone that, in eval mode, also gives ``logits_debiased`` = its logits minus its logits on the solid image
    (measured once per forward pass, in eval mode: no buffer changes)."""

    def __init__(self, backbone, fill: float):
        super().__init__(backbone)
        self.fill = float(fill)

    def bias(self, like: torch.Tensor) -> torch.Tensor:
        """g(I): the backbone's logits (1 x K) on the solid image, in the backbone's current mode."""
        return self.backbone(solid_image(like, self.fill))["logits"]

    def forward(self, x, **kwargs):
        out = self.backbone(x, **kwargs)
        if isinstance(out, dict) and not self.training:
            out["logits_debiased"] = debiased_logits(out["logits"], self.bias(x))
        return out


@ALGORITHMS.register("cdmad")
class CDMAD(AdaptedModels, FixMatch):
    """CDMAD (Lee & Kim, CVPR 2024) in FixMatch's step; see the module docstring."""

    prediction_heads = (("debiased", "logits_debiased"), ("linear", "logits"))

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        self.fill = float(args.cdmad_fill)
        self.debias_start = int(args.cdmad_debias_start)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    def _adapt(self, net):
        return SolidImageBiasNet(net, self.fill)

    @torch.no_grad()
    def measure_bias(self, like: torch.Tensor) -> torch.Tensor:
        """g(I) of the training model (eval mode, 1 x K; the model's mode is restored), or zeros before the debiasing
        starts."""
        if getattr(self, "epoch", 0) < self.debias_start:
            return torch.zeros(1, self.num_classes, device=like.device)
        with eval_mode(self.model):
            return self.model(solid_image(like, self.fill))["logits"].float()

    def pseudo_label_probs(self, logits_w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The debiased prediction of the weak view: softmax(z_w - g(I)) (ReMoP: its mixture, shifted likewise)."""
        logits_w = logits_w.detach()
        return adjusted_prediction(self, self.compute_prob(logits_w), logits_w, bias.reshape(-1))

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        bias = self.measure_bias(x_ulb_w)
        with self.amp_cm():
            # without use_cat, FixMatch's order: labeled, strong, then the weak view without gradient
            out_lb, out_w, out_s = forward_batches(self.model, (x_lb, x_ulb_w, x_ulb_s), self.use_cat,
                                                   ("logits", "feat"), order=(0, 2, 1), no_grad=(1,))
            sup_loss = self.ce_loss(out_lb["logits"], y_lb, reduction="mean")
            probs = self.pseudo_label_probs(out_w["logits"], bias)
            conf, pseudo = probs.max(dim=-1)
            mask = (conf >= self.p_cutoff).float()
            target = pseudo if self.use_hard_label else probs
            unsup_loss = self.consistency_loss(out_s["logits"], target, "ce", mask=mask)
            total_loss = sup_loss + self.lambda_u * unsup_loss
        feat = {"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"], "x_ulb_s": out_s["feat"]}
        out_dict = self.process_out_dict(loss=total_loss, feat=feat)
        log_dict = self.process_log_dict(sup_loss=sup_loss.item(), unsup_loss=unsup_loss.item(),
                                         total_loss=total_loss.item(), util_ratio=mask.mean().item(),
                                         cdmad_bias_range=(bias.max() - bias.min()).item())
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return FixMatch.get_argument() + [
            SSL_Argument("--cdmad_fill", float, 1.0,
                         "value of every input of the pattern-free image (network input space; authors: 1.0)"),
            SSL_Argument("--cdmad_debias_start", int, 0,
                         "pseudo-labels are debiased from this epoch (0-based) on (authors' CIFAR code: 101 of 500)"),
        ]

    RANGES = {"cdmad_debias_start": ">= 0"}  # an epoch (0-based); cdmad_fill: any input value
