"""ADELLO as a USB base learner: ``algorithm: adello`` (FixMatch's step with FlexDA and CCR); ReMoP wraps it as
``algorithm: adello, imb_algorithm: remop``.

Paper: Sanchez Aimar, Helgesen, Xu, Kuhlmann & Felsberg, "Flexible Distribution Alignment: Towards Long-tailed
Semi-supervised Learning with Proper Calibration", ECCV 2024 (ADELLO: Align and Distill Everything All at Once).
Authors' code: emasa/ADELLO-LTSSL (``semilearn/imb_algorithms/adello/{adello,utils}.py``, FixMatch with
distillation in ``semilearn/algorithms/fixmatch_distill``, configs ``config/classic_cv_imb/fixmatch_adello``).
Implemented here, with K classes, P_l the labeled class prior and t / T the fraction of training done:

- The unlabeled prior, estimated (:class:`PriorEstimate`): P_u <- m P_u + (1 - m) mean_i softmax(z_w,i), an EMA
  (m = ``adello_ema_p`` = 0.999) of the weak view's mean prediction, starting uniform. A step's losses use the
  estimate of the steps before it; the step's batch updates it afterwards.
- FlexDA's schedule (:func:`alpha_schedule`): alpha_t = 1 - (1 - alpha_min) (t / T)^k, alpha_min =
  ``adello_alpha_min`` = 0.1, k = ``adello_k`` = 2 -- 1 at the start, alpha_min at the end (t / T counted in
  iterations, or in whole epochs with ``adello_alpha_from_epoch``).
- The smoothed target prior (:func:`target_prior`): Q_t = P_u^alpha_t / sum_k P_u,k^alpha_t: the estimated
  unlabeled prior at the start, flattened toward uniform (balanced) as alpha_t -> alpha_min.
- Logit-adjusted losses toward Q_t (:func:`flexda_adjustment`): the classifier's logits z are trained to be the
  posterior under Q_t, so a loss on data of prior P sees z + log(P / Q_t) (the authors add 1e-9 to both priors):
  the labeled CE(z_lb + log(P_l / Q_t), y) and the unlabeled FixMatch consistency CE(z_s + log(P_u / Q_t), y_hat)
  on the weak view's hard pseudo-labels y_hat = argmax softmax(z_w), kept when max softmax(z_w) >= ``p_cutoff``.
  At t = 0 (Q = P_u) the unlabeled loss is plain FixMatch; by the end z is (nearly) balanced, and the test-time
  prediction is argmax z (the ``linear`` head).
- Complementary consistency regularisation, CCR (:func:`distillation_loss`): the unlabeled images the mask leaves
  out are distilled -- (1 - mask) x CE((z_s + log(P_u / Q_t)) / T_d, sharpen(softmax(z_w), T_d)), the target
  sharpened by T_d (p^(1/T_d), renormalised), weight ``adello_lambda_distill`` = 1, from ``adello_distill_start`` x
  num_train_iter on (the authors' configs: 50,000 of 262,144 = 0.19). T_d (``adello_distill_temperature``):
  ``imbalance`` -- exp(KL(U || P_u)), U uniform, measured once when CCR starts and kept (the paper distils at a
  temperature set by the estimated imbalance; the form is the authors' ``imbalance_distill_with_warmup``) -- or
  ``one`` (T_d = 1).
- Loss: L_s + ulb_loss_ratio L_u + lambda_distill L_CCR.

The estimate P_u and the fixed T_d live in :class:`PriorEstimate`, a hook whose ``checkpoint_attrs`` every checkpoint
carries, so a resumed run goes on with them.

What differs in the authors' code (each an option; the default is the paper's):

- ``adello_distill_temperature: one`` -- their released configs leave ``distill_T`` unset, and then their code
  distills at T_d = 1 (the imbalance temperature is only reached with ``distill_T`` set);
- with ``include_lb_to_ulb: True`` they leave the labeled images of the unlabeled batch out of the estimate of P_u;
  here every unlabeled row enters it (this project's paper configs keep the sets apart);
- their oracle mode ``adello_gt`` (the true unlabeled prior in place of the estimate) is not offered;
- the paper's text was read here through its abstract and summary only: the forms above follow the authors' code.

Noticed, left as the authors have it: P_u is estimated from the raw softmax of z_w, which FlexDA trains toward the
posterior under Q_t, so the estimate is pulled toward Q_t as Q_t flattens (softmax(z_w + log(P_u / Q_t)) would
estimate P_u itself).

With ReMoP on top (``imb_algorithm: remop``): ADELLO has one linear classifier and one pseudo-label path; ReMoP's
mixture (Eq. 6) of that classifier and the feature prediction takes the place of softmax(z_w) in the mask, the
pseudo-labels and CCR's target (the mixture's positive part, normalised, then sharpened: a ``remop_mix: prob``
mixture row can have negative entries and need not sum to 1). FlexDA's adjustment stays on the linear logits it
corrects, and P_u is estimated from the linear classifier's softmax, the prediction whose prior it is. ReMoP's mixture
is then the test-time prediction; results.json reports the linear head beside it (ADELLO's own test-time
prediction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from semilearn.algorithms.fixmatch import FixMatch
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core.hooks import Hook
from semilearn.core.utils import ALGORITHMS

from .. import pseudo_labels
from ..errors import UserError
from .imb_common import forward_batches, labeled_class_counts

DISTILL_TEMPERATURES = ("imbalance", "one")
#: added to both priors of the adjustment's ratio (the authors' eps)
PRIOR_EPS = 1e-9


# -- the math ------------------------------------------------------------------------------------------------------

def alpha_schedule(progress: float, alpha_min: float, k: float) -> float:
    """alpha_t = 1 - (1 - alpha_min) progress^k, progress = t / T in [0, 1]."""
    return 1.0 - (1.0 - alpha_min) * progress ** k


def target_prior(p_u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Q = P_u^alpha / sum(P_u^alpha): P_u itself at alpha = 1, uniform at alpha = 0."""
    powered = p_u.double() ** alpha
    return powered / powered.sum()


def flexda_adjustment(prior: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log((prior + eps) / (target + eps)): what the logits of data of ``prior`` get added, the classifier
    modelling the posterior under ``target``."""
    return torch.log((prior.double() + PRIOR_EPS) / (target.double() + PRIOR_EPS)).float()


def imbalance_temperature(p_u: torch.Tensor) -> float:
    """T_d = exp(KL(U || P_u)) = exp(sum_k (1/K) log((1/K) / P_u,k)): 1 for a uniform P_u, larger the more skewed."""
    p = p_u.double()
    uniform = torch.full_like(p, 1.0 / p.numel())
    return float(torch.exp((uniform * (uniform.log() - p.log())).sum()))


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """The rows' positive parts raised to 1 / T and renormalised (a softmax row at T = 1: itself)."""
    powered = probs.float().clamp_min(0.0) ** (1.0 / temperature)
    return powered / powered.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def distillation_loss(logits_s: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """CCR: mean over the batch of (1 - mask) x CE(logits_s / T, sharpen(target, T)) (``logits_s`` adjusted
    already)."""
    soft = sharpen(target.detach(), temperature)
    ce = -(soft * F.log_softmax(logits_s.float() / temperature, dim=-1)).sum(dim=-1)
    return (ce * (1.0 - mask)).mean()


# -- the estimate ----------------------------------------------------------------------------------------------------

class PriorEstimate(Hook):
    """ADELLO's estimate P_u of the unlabeled class prior (an EMA of the weak view's mean prediction) and CCR's
    temperature, fixed when distillation starts (None until then)."""

    checkpoint_attrs = ("p_u", "distill_temperature")

    def __init__(self, num_classes: int, momentum: float):
        self.momentum = float(momentum)
        self.p_u = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        self.distill_temperature = None

    @torch.no_grad()
    def observe(self, probs: torch.Tensor):
        """One step's weak-view predictions (rows summing to 1)."""
        self.p_u = self.momentum * self.p_u.to(probs.device) + (1.0 - self.momentum) * probs.double().mean(dim=0)


# -- the learner -----------------------------------------------------------------------------------------------------

@ALGORITHMS.register("adello")
class ADELLO(FixMatch):
    """ADELLO (Sanchez Aimar et al., ECCV 2024): FixMatch with FlexDA and CCR; see the module docstring."""

    prediction_heads = (("linear", "logits"),)  # argmax z: the posterior under Q_t, (nearly) balanced at the end

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        if not args.hard_label:
            raise UserError("adello uses hard pseudo-labels (CCR distils the soft ones it leaves out); set "
                            "hard_label: True")
        self.alpha_min, self.alpha_k = float(args.adello_alpha_min), float(args.adello_k)
        self.alpha_from_epoch = bool(args.adello_alpha_from_epoch)
        self.lambda_distill = float(args.adello_lambda_distill)
        self.distill_start_iter = float(args.adello_distill_start) * args.num_train_iter
        self.distill_temperature_rule = args.adello_distill_temperature
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    def set_hooks(self):
        counts = labeled_class_counts(self.dataset_dict["train_lb"].targets, self.num_classes)
        self.p_l = (counts / counts.sum()).double()
        self.register_hook(PriorEstimate(self.num_classes, self.args.adello_ema_p), "ADELLOPriorHook")
        super().set_hooks()

    @property
    def prior(self) -> PriorEstimate:
        return self.hooks_dict["ADELLOPriorHook"]

    def progress(self) -> float:
        """t / T: in iterations, or in whole epochs (``adello_alpha_from_epoch``)."""
        if self.alpha_from_epoch:
            return min(1.0, (self.it // self.num_iter_per_epoch) / self.epochs)
        return min(1.0, self.it / self.num_train_iter)

    def adjustments(self, device):
        """(labeled, unlabeled) logit adjustments log(P_l / Q_t), log(P_u / Q_t) of this step."""
        p_u = self.prior.p_u.to(device)
        q = target_prior(p_u, alpha_schedule(self.progress(), self.alpha_min, self.alpha_k))
        return flexda_adjustment(self.p_l.to(device), q), flexda_adjustment(p_u, q)

    def distill_temperature(self) -> float:
        """T_d, fixed (in the checkpointed estimate) the first time it is asked for."""
        if self.prior.distill_temperature is None:
            rule = self.distill_temperature_rule
            self.prior.distill_temperature = imbalance_temperature(self.prior.p_u) if rule == "imbalance" else 1.0
        return self.prior.distill_temperature

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        with self.amp_cm():
            # without use_cat, FixMatch's order: labeled, strong, then the weak view without gradient
            out_lb, out_w, out_s = forward_batches(self.model, (x_lb, x_ulb_w, x_ulb_s), self.use_cat,
                                                   ("logits", "feat"), order=(0, 2, 1), no_grad=(1,))
            adjust_lb, adjust_ulb = self.adjustments(out_lb["logits"].device)
            sup_loss = self.ce_loss(out_lb["logits"] + adjust_lb, y_lb, reduction="mean")
            logits_w = out_w["logits"].detach()
            probs = self.compute_prob(logits_w)  # ReMoP: its mixture
            conf, pseudo = probs.max(dim=-1)
            mask = (conf >= self.p_cutoff).float()
            logits_s = out_s["logits"] + adjust_ulb
            unsup_loss = self.consistency_loss(logits_s, pseudo, "ce", mask=mask)
            total_loss = sup_loss + self.lambda_u * unsup_loss
            distill = torch.zeros((), device=logits_s.device)
            if self.it >= self.distill_start_iter:
                distill = distillation_loss(logits_s, probs, mask, self.distill_temperature())
                pseudo_labels.record(self, "ccr", probs, 1.0 - mask)
                total_loss = total_loss + self.lambda_distill * distill
        self.prior.observe(torch.softmax(logits_w.float(), dim=-1))
        feat = {"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"], "x_ulb_s": out_s["feat"]}
        out_dict = self.process_out_dict(loss=total_loss, feat=feat)
        log_dict = self.process_log_dict(sup_loss=sup_loss.item(), unsup_loss=unsup_loss.item(),
                                         total_loss=total_loss.item(), util_ratio=mask.mean().item(),
                                         adello_distill_loss=distill.item(),
                                         adello_alpha=alpha_schedule(self.progress(), self.alpha_min, self.alpha_k))
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return FixMatch.get_argument() + [
            SSL_Argument("--adello_alpha_min", float, 0.1, "FlexDA: alpha at the end of training (0: balanced)"),
            SSL_Argument("--adello_k", float, 2.0, "FlexDA: alpha_t = 1 - (1 - alpha_min) (t/T)^k"),
            SSL_Argument("--adello_ema_p", float, 0.999, "EMA momentum of the estimated unlabeled prior"),
            SSL_Argument("--adello_alpha_from_epoch", str2bool, False,
                         "t/T in whole epochs instead of iterations (authors' default: iterations)"),
            SSL_Argument("--adello_lambda_distill", float, 1.0, "CCR: weight of the distillation loss"),
            SSL_Argument("--adello_distill_start", float, 0.19,
                         "CCR from this fraction of num_train_iter on (authors' configs: 50,000 of 262,144)"),
            SSL_Argument("--adello_distill_temperature", str, "imbalance",
                         f"{' | '.join(DISTILL_TEMPERATURES)}: T_d = exp(KL(uniform || P_u)) when CCR starts "
                         f"(paper), or 1 (the authors' released configs)"),
        ]

    CHOICES = {"adello_distill_temperature": DISTILL_TEMPERATURES}
    RANGES = {
        "adello_alpha_min": "[0, 1]",
        "adello_k": "> 0",
        "adello_ema_p": "[0, 1)",
        "adello_lambda_distill": ">= 0",
        "adello_distill_start": "[0, 1]",
    }
