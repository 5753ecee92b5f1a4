"""ReMoP as a USB imbalanced-algorithm wrapper: ``imb_algorithm: remop`` on any base learner.

Paper: Li, Zhang et al., "Towards Regularized Mixture of Predictions for Class-Imbalanced Semi-Supervised Facial
Expression Recognition". Implemented here:

- Eq. 4-6: a K x d feature classifier (class centers) beside the linear classifier; the feature prediction is the
  cosine of a feature to each center and the mixture is beta * p_l + (1 - beta) * p_s
  (:class:`~remop_usb.algorithms.feature_classifier.FeatureClassifierNet`).
- Eq. 7: the base learner's pseudo-labels and confidence come from the mixture on the weak view instead of the
  linear prediction. The wrapper does this by overriding ``compute_prob``, the one place where USB's learners
  (FixMatch, FlexMatch, FreeMatch, SoftMatch, ...) turn weak-view logits into a distribution: the logits handed to
  it are located in this step's forward outputs and replaced by the mixture of the same rows.
- Center loss lambda1 * L_c over labeled features and confident (max p_m >= tau) unlabeled features.
- Eq. 8: lambda2 * L_reg pushing the centered class centers toward a simplex ETF.
- Eq. 9: L = L_base + lambda1 * L_c + lambda2 * L_reg; the mixture is also the test-time prediction.
  Evaluation reports the mixture (primary, used for model selection) and the linear classifier.

Options reproducing the authors' released code (each a key; ``remop_preset: official`` sets all of them):
1. ``remop_similarity: dot`` -- raw dot product of features and centers instead of the cosine;
2. ``remop_mix: logit`` -- softmax of the mixed logits instead of mixing probabilities;
3. ``remop_reg: frobenius`` -- the Frobenius-norm form of the regularizer;
4. ``remop_center_grad_scale: 10000`` -- the centers' gradient multiplied by 1/lambda1 before the step (the
   released code steps the centers with a separate Adam of the same lr; Adam being per-parameter, keeping them in
   the model's optimizer is the same update);
5. ``ulb_loss_ratio: 0.2`` -- the released code's hidden weight on the unsupervised loss;
6. ``remop_ulb_center_view: strong`` and ``remop_center_reduction: mean`` -- the unlabeled center loss on the
   confident strong-view features, each part averaged (where the released code gets 0/0 = NaN with no confident
   sample, we add 0);
7. ``remop_eval_centers: live`` -- evaluation mixes the EMA backbone/classifier with the live (non-EMA) centers.
"""

from __future__ import annotations

import contextlib
from inspect import signature

import torch
from semilearn.algorithms.utils import SSL_Argument
from semilearn.core import ImbAlgorithmBase
from semilearn.core.utils import IMB_ALGORITHMS

from ..usb_compat import unwrap
from .feature_classifier import (
    CENTER_REDUCTIONS,
    MIXES,
    REGULARIZERS,
    SIMILARITIES,
    FeatureClassifierNet,
    center_loss,
    center_sq_distances,
    etf_regularizer,
)

PRESETS = {
    "paper": {},
    "official": {
        "remop_similarity": "dot",
        "remop_mix": "logit",
        "remop_reg": "frobenius",
        "remop_center_grad_scale": 1e4,
        "ulb_loss_ratio": 0.2,
        "remop_ulb_center_view": "strong",
        "remop_center_reduction": "mean",
        "remop_eval_centers": "live",
    },
}


class ForwardRecorder:
    """Keeps the (logits, mixture) of every forward pass of one training step, to look rows up by their logits."""

    def __init__(self):
        self.active = False
        self.records = []

    def hook(self, module, inputs, output):
        if self.active and isinstance(output, dict) and "mixture" in output:
            self.records.append((output["logits"].detach(), output["mixture"].detach()))

    @contextlib.contextmanager
    def recording(self):
        self.records, self.active = [], True
        try:
            yield self
        finally:
            self.active = False

    def mixture_for(self, logits: torch.Tensor):
        """The mixture rows produced together with exactly these logit rows in this step, or None."""
        n = logits.shape[0]
        for rec_logits, rec_mixture in self.records:
            if rec_logits.shape[1:] != logits.shape[1:] or rec_logits.shape[0] < n or n == 0:
                continue
            starts = (rec_logits == logits[0]).all(dim=1).nonzero().flatten().tolist()
            for s in starts:
                if s + n <= rec_logits.shape[0] and torch.equal(rec_logits[s:s + n], logits):
                    return rec_mixture[s:s + n]
        return None


@IMB_ALGORITHMS.register("remop")
class ReMoP(ImbAlgorithmBase):
    """Regularized Mixture of Predictions (ReMoP) on top of the base learner named by ``algorithm``."""

    PRESET_KEY = "remop_preset"
    PRESETS = PRESETS
    prediction_heads = (("mixture", "mixture"), ("linear", "logits"))

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        self.imb_init(args)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        self.model = self._wrap(self.model)
        self.ema_model = self._wrap(self.ema_model)
        self.ema_model.load_state_dict(self.model.state_dict())
        self.recorder = ForwardRecorder()
        self.model.register_forward_hook(self.recorder.hook)
        if self.center_grad_scale != 1.0:
            scale = self.center_grad_scale
            self.model.centers.register_hook(lambda grad: grad * scale)
        self.optimizer, self.scheduler = self.set_optimizer()
        self._mixture_ulb = None

    def imb_init(self, args):
        self.beta = args.remop_beta
        self.tau = args.remop_p_cutoff
        self.lambda_center = args.remop_lambda_center
        self.lambda_reg = args.remop_lambda_reg
        self.similarity = args.remop_similarity
        self.mix = args.remop_mix
        self.reg_kind = args.remop_reg
        self.center_reduction = args.remop_center_reduction
        self.ulb_center_view = args.remop_ulb_center_view
        self.center_grad_scale = float(args.remop_center_grad_scale)
        self.eval_centers = args.remop_eval_centers

    def _wrap(self, net):
        return FeatureClassifierNet(net, self.num_classes, beta=self.beta, similarity=self.similarity, mix=self.mix)

    # -- the mixture replaces the linear prediction for pseudo-labels (Eq. 7) -------------------------------------
    def compute_prob(self, logits):
        mixture = self.recorder.mixture_for(logits) if self.recorder.active else None
        if mixture is None:
            if self.recorder.active:
                raise RuntimeError(
                    f"ReMoP could not find the features behind the logits the base algorithm "
                    f"'{self.args.algorithm}' turns into pseudo-labels; it must compute them with self.model(...)")
            return super().compute_prob(logits)
        self._mixture_ulb = mixture
        return mixture

    def process_batch(self, **kwargs):
        input_args = list(signature(super().train_step).parameters.keys())
        return super().process_batch(input_args=input_args, **kwargs)

    def train_step(self, *args, **kwargs):
        self._mixture_ulb = None
        with self.recorder.recording():
            out_dict, log_dict = super().train_step(*args, **kwargs)
        feats = out_dict.get("feat") if isinstance(out_dict.get("feat"), dict) else {}
        if "x_lb" not in feats:
            raise RuntimeError(f"ReMoP needs out_dict['feat']['x_lb'] from the base algorithm "
                               f"'{self.args.algorithm}' (USB's process_out_dict(feat=...) contract)")
        centers = unwrap(self.model).centers
        groups = [center_sq_distances(feats["x_lb"], centers, kwargs["y_lb"])]
        mask_rate = 0.0
        if self._mixture_ulb is not None:
            view = "x_ulb_w" if self.ulb_center_view == "weak" else "x_ulb_s"
            feat_ulb = feats[view][0] if isinstance(feats[view], (list, tuple)) else feats[view]
            conf, pseudo = self._mixture_ulb.max(dim=1)
            mask = conf >= self.tau
            mask_rate = mask.float().mean().item()
            groups.append(center_sq_distances(feat_ulb[mask], centers, pseudo[mask]))
        loss_center = center_loss(groups, self.center_reduction)
        loss_reg = etf_regularizer(centers, self.reg_kind)
        out_dict["loss"] = out_dict["loss"] + self.lambda_center * loss_center + self.lambda_reg * loss_reg
        log_dict["train/remop_center_loss"] = loss_center.item()
        log_dict["train/remop_reg_loss"] = loss_reg.item()
        log_dict["train/remop_mask"] = mask_rate
        self._mixture_ulb = None
        return out_dict, log_dict

    # -- evaluation: the mixture at test time ----------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_context(self):
        """With ``remop_eval_centers: live`` the EMA model is evaluated with the live centers (released code)."""
        if self.eval_centers != "live":
            yield
            return
        ema_centers, live = unwrap(self.ema_model).centers, unwrap(self.model).centers
        saved = ema_centers.data.clone()
        ema_centers.data.copy_(live.data)
        try:
            yield
        finally:
            ema_centers.data.copy_(saved)

    @staticmethod
    def get_argument():
        return [
            SSL_Argument("--remop_preset", str, "paper", "paper | official: the released code's choices (see docs)"),
            SSL_Argument("--remop_beta", float, 0.5, "beta of Eq. 6: weight of the linear prediction"),
            SSL_Argument("--remop_p_cutoff", float, 0.95, "tau: mixture confidence for the unlabeled center loss"),
            SSL_Argument("--remop_lambda_center", float, 1e-4, "lambda1: weight of the center loss"),
            SSL_Argument("--remop_lambda_reg", float, 0.1, "lambda2: weight of the ETF regularizer (Eq. 8)"),
            SSL_Argument("--remop_similarity", str, "cosine", f"feature prediction: {' | '.join(SIMILARITIES)}"),
            SSL_Argument("--remop_mix", str, "prob", f"mixture: {' | '.join(MIXES)}"),
            SSL_Argument("--remop_reg", str, "paper", f"regularizer: {' | '.join(REGULARIZERS)}"),
            SSL_Argument("--remop_center_reduction", str, "half_sum", f"center loss: {' | '.join(CENTER_REDUCTIONS)}"),
            SSL_Argument("--remop_ulb_center_view", str, "weak", "unlabeled center loss features: weak | strong"),
            SSL_Argument("--remop_center_grad_scale", float, 1.0, "multiply the centers' gradient (official: 1e4)"),
            SSL_Argument("--remop_eval_centers", str, "ema", "centers used at evaluation: ema | live"),
        ]

    #: allowed values of the string options, checked by the config loader
    CHOICES = {
        "remop_preset": tuple(PRESETS),
        "remop_similarity": SIMILARITIES,
        "remop_mix": MIXES,
        "remop_reg": REGULARIZERS,
        "remop_center_reduction": CENTER_REDUCTIONS,
        "remop_ulb_center_view": ("weak", "strong"),
        "remop_eval_centers": ("ema", "live"),
    }
