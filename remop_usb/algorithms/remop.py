"""ReMoP as a USB imbalanced-algorithm wrapper: ``imb_algorithm: remop`` on any base learner.

Paper: Li, Zhang et al., "Towards Regularized Mixture of Predictions for Class-Imbalanced Semi-Supervised Facial
Expression Recognition". Implemented here:

- Eq. 4-6: a K x d feature classifier (class centers) beside the linear classifier; the feature prediction is the
  cosine of a feature to each center and the mixture is beta * p_l + (1 - beta) * p_s
  (:class:`~remop_usb.algorithms.feature_classifier.FeatureClassifierNet`).
- Eq. 7: the base learner's pseudo-labels and confidence come from the mixture on the weak view instead of the
  linear prediction. Every forward pass of a training step is recorded (logits, features, mixture); wherever the
  learner turns a prediction into probabilities, the rows are located in those records and the mixture of the same
  rows is substituted. There are two such places, both overridden here, none of the learners' code copied:
  ``compute_prob`` (logits -> probabilities), and ``call_hook`` for the hooks that receive a linear prediction
  (:data:`PREDICTION_ARGUMENTS`): logits that a hook would softmax are replaced by the mixture with the hook's
  softmax switched off, and probabilities that are exactly the softmax of recorded logits by the mixture; anything
  else (the mixture already, or probabilities derived from it) is passed on unchanged.
- Center loss lambda1 * L_c over labeled features and confident unlabeled features: the weak-view features whose
  own mixture is confident (max p_m >= tau), each with the center of its argmax (with two weak views, Ada-CM's,
  the mean of their mixtures, as the learner's own pseudo-label).
- Eq. 8: lambda2 * L_reg pushing the centered class centers toward a simplex ETF. ``train/remop_etf_gap`` logs
  max_{k != t} |cos(h_k - h_mean, h_t - h_mean) + 1/(K-1)| every step (0 at a simplex ETF).
- Eq. 9: L = L_base + lambda1 * L_c + lambda2 * L_reg, trained end to end: the centers are parameters of the model
  and learn from the gradient of lambda1 * L_c + lambda2 * L_reg, and L_c's gradient reaches the features too
  (``remop_center_update: gradient``, the default). The mixture is also the test-time prediction. Evaluation
  reports the mixture (primary, used for model selection) and the linear classifier.

How much L_c weighs. The paper's L_c is a half-SUM over the batch's rows (labeled and confident unlabeled), while
USB's cross-entropies are MEANS over the batch; lambda1 = 1e-4 multiplies the sum. With n rows at mean squared
distance D from their centers, lambda1 * L_c = 1e-4 * n * D / 2 against cross-entropies of order 1. Measured
(``train/remop_center_loss`` logs L_c unweighted) in the contract run (8 labeled images a batch, 512-d features of
the stand-in, centers from the labeled class means): L_c 1,113 at the first step (lambda1 L_c = 0.11, against a
supervised plus unsupervised CE of 3.3), 372 at step 100 (0.037 against 0.74): a few percent of the loss, so L_c
shapes the features gently. Each center's gradient is
lambda1 * sum_i (h_y - x_i) over its rows: with Adam the step size does not depend on that scale, but its balance
against lambda2 * L_reg's gradient does. The released code takes the MEAN within each group (labeled, confident
unlabeled) and multiplies the centers' gradient by 1/lambda1 (``remop_center_reduction: mean``,
``remop_center_grad_scale: 1e4`` in ``official``): there L_c barely moves the features (1e-4 x a mean) and fully
moves the centers.

What the paper leaves open, and this project's choices (each a key):

- ``remop_center_init``: the paper does not say how the centers start; the released code draws them from randn.
  Random 512-d centers have cosine about 0 with every (non-negative, post-ReLU) feature, so the feature prediction
  is near 0 everywhere and the mixture cannot pass tau = 0.95 until the centers have travelled to their features,
  which Adam at lr 1e-4 (at most ~1e-4 per coordinate and step) does not do within a short run.
  ``class_mean`` (the default, this project's choice) sets each center to the mean feature of its labeled images
  before step 0 (:meth:`ReMoP.init_centers`; not on resume, where the centers come from the checkpoint); ``randn``
  is the released code's (``official``).
- ``remop_center_update: wen`` (not from the paper, which cites Wen et al. 2016 for the center loss only): L_c sees
  detached centers, and after each optimizer step every center moves toward its batch features by
  ``remop_center_alpha`` (skipped when fp16's GradScaler skips the step). The centers then follow the features at
  least a quarter of the way each step, and L_reg, which still has the centers' gradient, cannot shape them.

What the mixture replaces, per learner (``algorithm: ...``):

- ``supervised`` (Vanilla): no pseudo-labels; the mixture enters the center loss's labeled part and test time only.
- ``fixmatch``: ``compute_prob`` of the weak logits -> the fixed-threshold mask (max p_m >= p_cutoff) and the
  hard pseudo-labels (argmax p_m).
- ``flexmatch``: ``compute_prob`` of the weak logits -> the class-wise flexible thresholds: the mask and the
  ``selected_label`` bookkeeping (argmax p_m of samples with max p_m >= p_cutoff) behind the learning effects,
  and the pseudo-labels.
- ``freematch``: the weak logits handed to its MaskingHook -> the self-adaptive threshold's state (``time_p``:
  EMA of the mean max p_m; ``p_model``: EMA of the mean p_m; ``label_hist``: histogram of argmax p_m) and its mask;
  the logits handed to PseudoLabelingHook -> argmax p_m. Its entropy (fairness) term keeps the strong view's
  softmax, measured against that mixture-based ``p_model``.
- ``softmatch``: the softmax of the weak (and labeled) logits handed to its DistAlignHook -> p_m (so DA's running
  ``p_model``, and ``p_target`` with ``dist_uniform: False``, are means of p_m); the aligned mixture feeds the
  truncated-Gaussian weighting and its running mean/variance of the confidence; the logits handed to
  PseudoLabelingHook -> argmax p_m.
- ``adacm``: every ``compute_prob`` -> the labeled confidences its adaptive margins are learned from (also in the
  EMA pass of ``adacm_margin_source: ema``), and both weak views, whose mean mixture is split into subset I
  (pseudo-labels argmax) and subset II by those margins.

With soft pseudo-labels (``hard_label: False``) the mixture itself is the target, not sharpened by ``T``. With
``remop_mix: prob`` (Eq. 6) a mixture row is not a distribution (the cosine term lies in [-1, 1]); learners that
average it (FreeMatch's ``p_model``, SoftMatch's alignment) get it as it is. ``remop_mix: logit`` gives a softmax.

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

The released code's training loop, also set by ``official`` (plugin and USB keys, usable with any method):

- ``use_cat: False`` -- one forward pass per view (labeled, weak, strong), so BatchNorm normalises each view with
  its own batch statistics; the recorder keeps every pass of the step, so the mixture of the weak view is found in
  its own pass;
- ``ema_weight_decay: 0.02`` -- the released ``WeightEMA``'s decoupled weight decay: after each EMA update the
  model's weights are multiplied by (1 - lr x 0.02) (:mod:`remop_usb.usb_compat.ema`); the centers are exempt
  (the released code keeps them outside the model);
- ``crop_prob: 0.5`` and ``crop_padding_mode: constant`` -- the weak crop is ``RandomApply([RandomCrop(size,
  padding)], p=0.5)`` with zero padding (:mod:`datasets_fer.transforms`; the strong view shares the geometry);
- ``num_iter_per_epoch: 800`` -- epochs of 800 iterations (the paper: 1,000), so 100 epochs are 80,000 iterations.
  A config that sets ``num_train_iter`` fixes the iterations per epoch itself (the demo configs do, for their CPU
  budget); the start of the run names it.

What still differs from the released code (hangyu94/ReMoP, ``main.py``): its ``WeightEMA`` also averages the
BatchNorm running statistics (USB copies them) and decays them with the weights; its strong view applies
RandAugment (its own implementation) to the image before the resize and crop, here USB's RandAugment after them;
USB's FixMatch runs the strong view before the weak one (the released code: weak, then strong), which changes the
order of the BatchNorm running-statistics updates; it evaluates once an epoch (every 800 iterations) where the
paper configs evaluate every ``num_eval_iter`` (1,000); and its labeled/unlabeled split is drawn by its own
procedure.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from semilearn.algorithms.utils import SSL_Argument
from semilearn.core import ImbAlgorithmBase
from semilearn.core.hooks import Hook
from semilearn.core.utils import IMB_ALGORITHMS

from .. import pseudo_labels
from ..errors import UserError
from ..evaluation import WithLearnerHeads
from ..usb_compat import unwrap
from .feature_classifier import (
    CENTER_INITS,
    CENTER_REDUCTIONS,
    CENTER_UPDATES,
    FEATURES,
    MIXES,
    REGULARIZERS,
    SIMILARITIES,
    FeatureClassifierNet,
    center_loss,
    center_sq_distances,
    class_sums,
    etf_gap,
    etf_regularizer,
    set_class_means,
    wen_center_update,
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
        "remop_feature": "head",
        "remop_center_update": "gradient",
        "remop_center_init": "randn",
        "use_cat": False,
        "ema_weight_decay": 0.02,
        "crop_prob": 0.5,
        "crop_padding_mode": "constant",
        "num_iter_per_epoch": 800,
    },
}


class ForwardRecorder:
    """Keeps the outputs of the model's forward passes, to find the mixture produced together with given rows.

    During a training step (:meth:`recording`) every forward pass is kept; outside one, only the latest (so that a
    learner calling ``compute_prob`` right after a forward of its own -- Ada-CM's EMA pass -- still gets the
    mixture). Rows are looked up by their logits, their features, or their linear probabilities (the softmax of
    the logits).
    """

    FIELDS = ("logits", "feat", "mixture", "center_feat")
    #: kept with their autograd graph during a step (the center loss differentiates through them)
    WITH_GRAD = ("center_feat",)

    def __init__(self):
        self.active = False
        self.records = []

    def hook(self, module, inputs, output):
        if not (isinstance(output, dict) and "mixture" in output):
            return
        record = {k: output[k] if self.active and k in self.WITH_GRAD else output[k].detach()
                  for k in self.FIELDS if k in output}
        if self.active:
            self.records.append(record)
        else:
            self.records = [record]

    @contextlib.contextmanager
    def recording(self):
        self.records, self.active = [], True
        try:
            yield self
        finally:
            self.active = False

    def is_mixture(self, rows: torch.Tensor) -> bool:
        """Whether ``rows`` are a view of a recorded mixture (what ``compute_prob`` returned): found by their place
        in its memory, without comparing values."""
        rows = rows.detach()
        return any(_view_start(record["mixture"], rows) is not None for record in self.records)

    @staticmethod
    def _values(record, field):
        if field == "probs":
            return torch.softmax(record["logits"], dim=-1)
        return record.get(field)

    def mixture_for(self, rows: torch.Tensor, field: str = "logits", want: str = "mixture"):
        """The ``want`` rows (default the mixture) produced together with exactly these rows of ``field``
        (``logits``, ``feat`` or ``probs``) in one recorded forward pass, or None. Rows that are a view of a recorded
        output (what learners slice from ``self.model(...)``) are found by their place in its memory; others by their
        values, where rows found at several places with different outputs are an error (they cannot be told
        apart)."""
        rows = rows.detach()
        for record in self.records:
            start = _view_start(record.get(field), rows)
            if start is not None:
                return record[want][start:start + rows.shape[0]]
        found = []
        for record in self.records:
            values = self._values(record, field)
            for s in ([] if values is None else _starts_of(values, rows)):
                found.append(record[want][s:s + rows.shape[0]])
        if not found:
            return None
        if any(not torch.equal(found[0].detach(), other.detach()) for other in found[1:]):
            raise RuntimeError(f"ReMoP: these {field} rows occur several times in this step's forward passes with "
                               f"different {want} rows; cannot tell which {want} rows belong to them")
        return found[0]


def _view_start(values, rows: torch.Tensor):
    """s such that ``rows`` is the view ``values[s:s + len(rows)]`` (same memory, same layout), else None."""
    if values is None or rows.shape[0] == 0 or values.shape[1:] != rows.shape[1:] or values.dtype != rows.dtype:
        return None
    if rows.untyped_storage().data_ptr() != values.untyped_storage().data_ptr() or rows.stride() != values.stride():
        return None
    start, rest = divmod(rows.storage_offset() - values.storage_offset(), values.stride(0))
    if rest or start < 0 or start + rows.shape[0] > values.shape[0]:
        return None
    return start


def _starts_of(values: torch.Tensor, rows: torch.Tensor):
    """Every s such that values[s:s + len(rows)] equals ``rows`` exactly."""
    n = rows.shape[0]
    if n == 0 or values.dtype != rows.dtype or values.shape[1:] != rows.shape[1:] or values.shape[0] < n:
        return []
    starts = (values == rows[0]).all(dim=1).nonzero().flatten().tolist()
    return [s for s in starts if s + n <= values.shape[0] and torch.equal(values[s:s + n], rows)]


#: (hook name, hook method) -> the keyword arguments through which USB's learners hand a hook the linear prediction
#: of a batch: (argument, flag). With the flag set (its default is True) the hook applies a softmax, so the
#: argument holds logits; otherwise -- and where there is no flag -- it holds probabilities.
PREDICTION_ARGUMENTS = {
    ("MaskingHook", "masking"): (("logits_x_ulb", "softmax_x_ulb"), ("logits_x_lb", "softmax_x_lb")),
    ("PseudoLabelingHook", "gen_ulb_targets"): (("logits", "softmax"),),
    ("DistAlignHook", "dist_align"): (("probs_x_ulb", None), ("probs_x_lb", None)),
}


@IMB_ALGORITHMS.register("remop")
class ReMoP(ImbAlgorithmBase):
    """Regularized Mixture of Predictions (ReMoP) on top of the base learner named by ``algorithm``."""

    PRESET_KEY = "remop_preset"
    PRESETS = PRESETS
    #: the mixture (primary: model selection) and the linear classifier, then the base learner's own test-time heads
    #: (ACR's ``balanced``, CDMAD's ``debiased``; :class:`~remop_usb.evaluation.WithLearnerHeads`)
    prediction_heads = WithLearnerHeads((("mixture", "mixture"), ("linear", "logits")))

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        self.imb_init(args)
        settings = dict(vars(self))
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        overwritten = sorted(k for k, v in settings.items() if getattr(self, k, None) is not v)
        if overwritten:  # one object: a learner setting a name of its own there would silently change ReMoP
            raise RuntimeError(f"the base learner '{args.algorithm}' overwrites ReMoP's attributes {overwritten}; "
                               f"rename them in the learner")
        self.model = self._wrap(self.model)
        self.ema_model = self._wrap(self.ema_model)
        self.ema_model.load_state_dict(self.model.state_dict())
        self.recorder = ForwardRecorder()
        self.model.register_forward_hook(self.recorder.hook)
        self.ema_model.register_forward_hook(self.recorder.hook)
        if self.center_grad_scale != 1.0:
            scale = self.center_grad_scale
            self.model.centers.register_hook(lambda grad: grad * scale)
        self.optimizer, self.scheduler = self.set_optimizer()

    def imb_init(self, args):
        refused = getattr(self, "REMOP_REFUSED", None)  # a learner ReMoP cannot wrap says why (Meta-Expert)
        if refused:
            raise UserError(f"imb_algorithm 'remop' on algorithm '{args.algorithm}' is refused: {refused}")
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
        self.feature = args.remop_feature
        self.center_update = args.remop_center_update
        self.center_init = args.remop_center_init
        self.center_alpha = float(args.remop_center_alpha)  # (0, 1]: RANGES, checked by the config
        self.pending_center_update = None
        self.scale_before_step = None
        if args.algorithm != "supervised" and not args.use_cat and self.ulb_center_view == "weak":
            raise UserError("use_cat: False runs USB's weak unlabeled forward under no_grad, so the weak-view center "
                            "loss could not reach the encoder: set remop_ulb_center_view: strong (as remop_preset: "
                            "official does) or use_cat: True")

    def _wrap(self, net):
        return FeatureClassifierNet(net, self.num_classes, beta=self.beta, similarity=self.similarity, mix=self.mix,
                                    feature=self.feature)

    def set_hooks(self):
        super().set_hooks()
        # before_run: before the EMA hook (HIGH) copies the model; after_train_step: after the optimizer's step
        # (HIGHEST), before the EMA update (HIGH)
        self.register_hook(CentersHook(), "CentersHook", "VERY_HIGH")

    # -- the mixture replaces the linear prediction for pseudo-labels (Eq. 7) -------------------------------------
    def compute_prob(self, logits):
        """The mixture of the rows these logits came from (FixMatch, FlexMatch, Ada-CM, ... call this)."""
        mixture = self.recorder.mixture_for(logits)
        if mixture is not None:
            return mixture
        if self.recorder.active:
            raise RuntimeError(
                f"ReMoP could not find the features behind the logits the base algorithm "
                f"'{self.args.algorithm}' turns into pseudo-labels; it must compute them with self.model(...)")
        return super().compute_prob(logits)

    def call_hook(self, fn_name, hook_name=None, *args, **kwargs):
        """Hand the learner's hooks the mixture wherever it hands them a linear prediction (see the docstring)."""
        if hook_name is not None and self.recorder.active:
            kwargs = self._with_mixture(fn_name, hook_name, kwargs)
        return super().call_hook(fn_name, hook_name, *args, **kwargs)

    def _with_mixture(self, fn_name, hook_name, kwargs):
        kwargs = dict(kwargs)
        for arg, flag in PREDICTION_ARGUMENTS.get((hook_name, fn_name), ()):
            value = kwargs.get(arg)
            if not isinstance(value, torch.Tensor):
                continue
            if flag is not None and kwargs.get(flag, True):  # logits the hook would turn into probabilities
                kwargs[arg], kwargs[flag] = self.compute_prob(value.detach()), False
                continue
            if self.recorder.is_mixture(value):  # the mixture already (FixMatch's, FlexMatch's compute_prob): kept
                continue
            mixture = self.recorder.mixture_for(value, "probs")  # the softmax of recorded logits
            if mixture is not None:
                kwargs[arg] = mixture  # anything else is derived from the mixture: kept
        return kwargs

    def train_step(self, *args, **kwargs):
        with self.recorder.recording():
            out_dict, log_dict = super().train_step(*args, **kwargs)
            feats = out_dict.get("feat") if isinstance(out_dict.get("feat"), dict) else {}
            if "x_lb" not in feats:
                raise RuntimeError(f"ReMoP needs out_dict['feat']['x_lb'] from the base algorithm "
                                   f"'{self.args.algorithm}' (USB's process_out_dict(feat=...) contract)")
            centers = unwrap(self.model).centers
            # Wen et al.: L_c's gradient reaches the features; the centers follow them by their own update
            loss_centers = centers.detach() if self.center_update == "wen" else centers
            rows = [(self._center_feat(feats["x_lb"]), kwargs["y_lb"])]
            mask_rate = 0.0
            if "x_ulb_w" in feats:
                feat_ulb, pseudo, mask_rate = self._confident_unlabeled(feats)
                rows.append((feat_ulb, pseudo))
            groups = [center_sq_distances(f, loss_centers, y) for f, y in rows]
        if self.center_update == "wen":
            self.pending_center_update = (torch.cat([f.detach() for f, _ in rows]), torch.cat([y for _, y in rows]))
            self.scale_before_step = self._loss_scale()
        loss_center = center_loss(groups, self.center_reduction)
        loss_reg = etf_regularizer(centers, self.reg_kind)
        out_dict["loss"] = out_dict["loss"] + self.lambda_center * loss_center + self.lambda_reg * loss_reg
        log_dict["train/remop_center_loss"] = loss_center.item()
        log_dict["train/remop_reg_loss"] = loss_reg.item()
        log_dict["train/remop_mask"] = mask_rate
        log_dict["train/remop_etf_gap"] = etf_gap(centers)
        return out_dict, log_dict

    def _loss_scale(self):
        """fp16's GradScaler scale now (None without one): it drops exactly when the scaler skips a step."""
        scaler = getattr(self, "loss_scaler", None)
        if not self.use_amp or scaler is None or not scaler.is_enabled():
            return None
        return scaler.get_scale()

    def _center_feat(self, feat):
        """The feature classifier's input (``center_feat``, with its graph) of the rows whose encoder feature is
        ``feat`` (what the learner put in ``out_dict['feat']``)."""
        found = self.recorder.mixture_for(feat, "feat", want="center_feat")
        if found is None:
            raise RuntimeError(f"ReMoP could not find the features of the base algorithm '{self.args.algorithm}' "
                               f"in this step's forward passes")
        return found

    def _confident_unlabeled(self, feats):
        """The unlabeled features whose weak-view mixture is confident (max p_m >= tau), their pseudo-labels
        (argmax), and the fraction of such samples. A learner with two weak views (Ada-CM's ``x_ulb_w_2``)
        pseudo-labels from their mean prediction, so the mean of the two mixtures decides here too; the features
        are those of the first weak view (or of the strong view, ``remop_ulb_center_view: strong``)."""
        weak = _first(feats["x_ulb_w"])
        views = [weak] + ([_first(feats["x_ulb_w_2"])] if "x_ulb_w_2" in feats else [])
        mixtures = [self.recorder.mixture_for(view, "feat") for view in views]
        if any(m is None for m in mixtures):
            raise RuntimeError(f"ReMoP could not find the weak-view features of the base algorithm "
                               f"'{self.args.algorithm}' in this step's forward passes")
        conf, pseudo = (sum(mixtures) / len(mixtures)).max(dim=1)
        mask = conf >= self.tau
        pseudo_labels.record(self, "remop", pseudo, mask)
        feat_ulb = self._center_feat(weak if self.ulb_center_view == "weak" else _first(feats["x_ulb_s"]))
        return feat_ulb[mask], pseudo[mask], mask.float().mean().item()

    def update_centers(self):
        """Wen et al.'s center update from this step's labeled and confident unlabeled features (run by
        :class:`CenterUpdateHook` after the optimizer's step)."""
        if self.pending_center_update is None:
            return
        feat, labels = self.pending_center_update
        self.pending_center_update = None
        before, after = self.scale_before_step, self._loss_scale()
        if before is not None and after < before:  # the scaler found inf/NaN and skipped the optimizer's step
            return
        wen_center_update(unwrap(self.model).centers.data, feat, labels, self.center_alpha, reduce=_sum_over_processes)

    def init_centers(self):
        """``remop_center_init: class_mean``: before step 0 (not on resume), each center becomes the mean feature of
        its labeled images (the feature classifier's input, the model in eval mode, the images under the evaluation
        transform), computed on every process alike; a class without labeled images keeps its random center. The
        global RNG streams are left as they were, so the run differs from a ``randn`` one only in its centers."""
        if self.center_init != "class_mean" or self.resume or self.it > 0:
            return
        model = unwrap(self.model)
        shown = copy.copy(self.dataset_dict["train_lb"])
        shown.transform, shown.strong_transform = self.dataset_dict["eval"].transform, None
        loader = torch.utils.data.DataLoader(shown, batch_size=self.args.eval_batch_size, shuffle=False,
                                             num_workers=0)
        sums = torch.zeros_like(model.centers.data)
        counts = torch.zeros(sums.shape[0], dtype=sums.dtype, device=sums.device)
        was_training = self.model.training
        self.model.eval()
        with _rng_kept(), torch.no_grad():
            for batch in loader:
                x, y = batch["x_lb"].to(sums.device), batch["y_lb"].to(sums.device)
                batch_sums, batch_counts = class_sums(sums, self.model(x)["center_feat"].float(), y)
                sums += batch_sums
                counts += batch_counts
        self.model.train(was_training)
        set_class_means(model.centers.data, sums, counts)
        unwrap(self.ema_model).centers.data.copy_(model.centers.data)

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
            SSL_Argument("--remop_feature", str, "encoder",
                         f"feature of the feature classifier: {' | '.join(FEATURES)} (head: after the head's dropout)"),
            SSL_Argument("--remop_center_update", str, "gradient",
                         f"how the centers learn: {' | '.join(CENTER_UPDATES)} (gradient: Eq. 9, end to end; wen: "
                         f"Wen et al. 2016's update, not from the paper)"),
            SSL_Argument("--remop_center_init", str, "class_mean",
                         f"how the centers start: {' | '.join(CENTER_INITS)} (class_mean: labeled feature means "
                         f"before step 0, this project's choice; randn: the released code)"),
            SSL_Argument("--remop_center_alpha", float, 0.5, "alpha of Wen et al.'s center update, in (0, 1]"),
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
        "remop_feature": FEATURES,
        "remop_center_update": CENTER_UPDATES,
        "remop_center_init": CENTER_INITS,
    }
    RANGES = {
        "remop_beta": "[0, 1]",  # the mixture beta p_l + (1 - beta) p_s
        "remop_p_cutoff": "[0, 1]",
        "remop_lambda_center": ">= 0",
        "remop_lambda_reg": ">= 0",
        "remop_center_grad_scale": "> 0",
        "remop_center_alpha": "(0, 1]",  # Wen et al.'s center learning rate
    }


class CentersHook(Hook):
    """ReMoP's centers outside the loss: their initialisation before the run (``remop_center_init``) and Wen et al.'s
    update after each optimizer step (``remop_center_update: wen``)."""

    checkpoint_attrs = ()  # no state: the centers are model parameters

    def before_run(self, algorithm):
        algorithm.init_centers()

    def after_train_step(self, algorithm):
        if algorithm.center_update == "wen":
            algorithm.update_centers()


@contextlib.contextmanager
def _rng_kept():
    """Inside, the global RNGs (torch's CPU and CUDA, numpy's, Python's) may be consumed; on leaving they are back
    where they were."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _sum_over_processes(tensor):
    """The sum of ``tensor`` over the processes of a distributed run (itself otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def _first(value):
    """A view's features, or the first of several (learners with two strong views give a list)."""
    return value[0] if isinstance(value, (list, tuple)) else value
