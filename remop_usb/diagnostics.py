"""Diagnostics during training: pseudo-label quality and neural-collapse geometry, on the unlabeled set.

Every ``diag_every`` iterations (default ``num_eval_iter``) and after the last one, :class:`DiagnosticsHook` runs the
evaluated model (the EMA model in eval mode, as USB's evaluation does) over a fixed subset of at most
``diag_max_samples`` unlabeled training images -- drawn once with the run's seed, shown with the evaluation transform
so that two passes differ only by the model -- and compares its predictions with the labels the unlabeled set keeps
back. Cost: one forward pass over that subset per interval (1000 images by default; 0 means the whole set).

Pseudo-label quality (the paper's Fig. 1b), per prediction the algorithm has:

- ``linear``: argmax of the linear classifier; ``feature``: argmax of the feature prediction (ReMoP's cosine to the
  class centers, Eq. 5); ``mixture``: argmax of ReMoP's mixture (Eq. 6, the pseudo-label ReMoP trains with);
- per class and macro precision, recall and F1 of the argmax over every image (sklearn's
  precision_recall_fscore_support; macro = the mean over the classes present in the subset);
- with a confidence threshold (:func:`confidence_thresholds`: Ada-CM's current per-class margins, Adsh's current
  per-class thresholds, else the learner's ``p_cutoff``, applied as in FixMatch to the softmax of the linear logits
  and to the mixture; the feature prediction is a cosine, not a probability, and has none): the mask rate per TRUE
  class (fraction of that class's images whose pseudo-label passes) and the precision, recall and F1 of the
  pseudo-labels that pass (an image below the threshold counts as no label). Rules that are not a confidence
  threshold -- InPL's energy cutoff, FlexMatch's and FreeMatch's thresholds that move with every batch, SoftMatch's
  soft weights -- are measured at ``p_cutoff``, a common yardstick rather than their own mask.

Pseudo-labels in training come from the live model on a random weak view; USB's ``train/util_ratio`` (FixMatch)
and ReMoP's ``train/remop_mask`` log those batch by batch.

Neural-collapse geometry (Papyan et al. 2020; the paper's Sec. 3), for every method, on the ``feat`` output of the
same pass: class means mu_c, their mean mu_G (as the paper's h_G), M_c = mu_c - mu_G;

- ``nc_mean_cosine``: mean pairwise cosine of the M_c, against the simplex-ETF value ``nc_etf_cosine`` = -1/(K-1)
  (K = classes present), and ``nc_std_cosine`` its spread (0 when equiangular);
- ``nc_norm_cv``: std/mean of the norms |M_c| (0 when equinorm);
- ``nc1``: within-class variability tr(Sigma_W Sigma_B^+) / K, Sigma_W the within-class covariance (1/N),
  Sigma_B = 1/K sum_c M_c M_c^T, its pseudo-inverse on its top K-1 eigenvectors (0 when features collapse);
- ReMoP: ``centers_mean_cosine``, the same mean cosine for the learned class centers H.

Each pass appends one record to ``save_dir/save_name/diagnostics.jsonl`` (the file is rewritten atomically), puts the
macro figures into USB's ``log_dict`` (printed by LoggingHook) and every scalar into TensorBoard (``diag/...``);
the W&B hook logs the same scalars.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os

import numpy as np
import torch
from semilearn.core.hooks import Hook
from sklearn.metrics import precision_recall_fscore_support

from .evaluation import predict
from .fileio import atomic_output
from .usb_compat import unwrap
from .usb_compat.distributed import is_main_process

DIAG_FILE = "diagnostics.jsonl"
_LOADER_KEY = "_remop_diagnostics"


# -- the measures -----------------------------------------------------------------------------------------------

def _macro(values, support):
    present = support > 0
    return float(np.mean(values[present])) if present.any() else 0.0


def confidence_thresholds(algorithm):
    """The confidence an unlabeled image's pseudo-label must reach under the algorithm's own rule, as it stands:
    per class (K values, indexed by the pseudo-label) for Ada-CM's margins and Adsh's refitted thresholds, else the
    learner's ``p_cutoff``; None for a learner without pseudo-labels (or without such a threshold)."""
    hook = getattr(algorithm, "hooks_dict", {}).get("MaskingHook")
    for attribute in ("margins", "thresholds"):  # Ada-CM's AdaptiveMarginHook, Adsh's AdaptiveThresholds
        values = getattr(hook, attribute, None)
        if isinstance(values, torch.Tensor) and values.numel() == algorithm.num_classes:
            return values.detach().double().cpu().numpy()
    return getattr(algorithm.args, "p_cutoff", None)


def pseudo_label_quality(y_true, y_pred, num_classes, confidence=None, threshold=None):
    """Per-class and macro precision/recall/F1 of ``y_pred``; with a threshold (a number, or one per class indexed
    by the pseudo-label) also the mask rate per true class and the scores of the pseudo-labels whose
    ``confidence`` reaches it (values in [0, 1])."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(num_classes))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {"support": support.tolist(), "precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(),
           "macro_precision": _macro(p, support), "macro_recall": _macro(r, support), "macro_f1": _macro(f, support)}
    if threshold is None:
        return out
    per_class = np.ndim(threshold) == 1
    mask = np.asarray(confidence) >= (np.asarray(threshold)[y_pred] if per_class else threshold)
    kept = np.where(mask, y_pred, -1)  # -1 is no label: a miss for recall, not counted by precision
    pm, rm, fm, _ = precision_recall_fscore_support(y_true, kept, labels=labels, zero_division=0)
    rate = [float(mask[y_true == c].mean()) if support[c] else None for c in labels]
    out.update({"threshold": [float(t) for t in threshold] if per_class else float(threshold), "mask_rate": rate, "mask_rate_all": float(mask.mean()),
                "masked_precision": pm.tolist(), "masked_recall": rm.tolist(), "masked_f1": fm.tolist(),
                "masked_macro_precision": _macro(pm, support), "masked_macro_recall": _macro(rm, support),
                "masked_macro_f1": _macro(fm, support)})
    return out


def _off_diagonal_cosines(vectors):
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    return cos[~np.eye(len(vectors), dtype=bool)]


def neural_collapse(feat, y, num_classes):
    """Geometry of the class means of ``feat`` (N x d) under labels ``y`` (see the module docstring)."""
    feat, y = np.asarray(feat, dtype=np.float64), np.asarray(y)
    present = [c for c in range(num_classes) if (y == c).any()]
    k = len(present)
    if k < 2:
        return {"nc_classes": k}
    means = np.stack([feat[y == c].mean(axis=0) for c in present])
    centered_means = means - means.mean(axis=0)
    cos = _off_diagonal_cosines(centered_means)
    norms = np.linalg.norm(centered_means, axis=1)
    # Sigma_B = M^T M / k = V diag(s^2 / k) V^T; its pseudo-inverse on the top k-1 directions
    _, s, vt = np.linalg.svd(centered_means, full_matrices=False)
    s, vt = s[:k - 1], vt[:k - 1]
    keep = s > 1e-9 * max(s.max(), 1e-300)
    within = feat[np.isin(y, present)] - means[np.searchsorted(present, y[np.isin(y, present)])]
    projected = within @ vt[keep].T  # tr(Sigma_W V S^-2 k V^T) = k/N * sum_j |D v_j|^2 / s_j^2
    nc1 = float((projected ** 2).sum(axis=0) @ (k / s[keep] ** 2) / len(within) / k) if keep.any() else float("inf")
    return {"nc_classes": k, "nc_mean_cosine": float(cos.mean()), "nc_std_cosine": float(cos.std()),
            "nc_etf_cosine": -1.0 / (k - 1), "nc_norm_cv": float(norms.std() / max(norms.mean(), 1e-12)),
            "nc1": nc1}


def centers_mean_cosine(centers):
    """Mean pairwise cosine of the globally centered class centers (ReMoP's H)."""
    c = np.asarray(centers, dtype=np.float64)
    return float(_off_diagonal_cosines(c - c.mean(axis=0)).mean())


# -- one pass ---------------------------------------------------------------------------------------------------

def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _predictions(outputs):
    """{name: (scores N x K, confidence or None)} for the linear, feature and mixture predictions available."""
    preds = {"linear": _softmax(outputs["logits"])}
    if "feat_pred" in outputs:
        preds["feature"] = outputs["feat_pred"]
    if "mixture" in outputs:
        preds["mixture"] = outputs["mixture"]
    return preds


@contextlib.contextmanager
def _loader_in(algorithm, loader):
    algorithm.loader_dict[_LOADER_KEY] = loader
    try:
        yield _LOADER_KEY
    finally:
        del algorithm.loader_dict[_LOADER_KEY]


def diagnose(algorithm, loader):
    """One diagnostics record for the algorithm's current evaluated model over ``loader``."""
    net = unwrap(algorithm.ema_model)
    keys = ["logits", "feat"] + (["feat_pred", "mixture"] if hasattr(net, "centers") else [])
    with _loader_in(algorithm, loader) as dest:
        y, outputs = predict(algorithm, dest, keys)
    k = algorithm.num_classes
    threshold = confidence_thresholds(algorithm)
    record = {"it": int(algorithm.it) + 1, "num_samples": int(len(y)), "pseudo_labels": {}}
    for name, scores in _predictions(outputs).items():
        thr = None if name == "feature" else threshold
        record["pseudo_labels"][name] = pseudo_label_quality(y, scores.argmax(axis=1), k, scores.max(axis=1), thr)
    record["geometry"] = neural_collapse(outputs["feat"], y, k)
    if hasattr(net, "centers"):
        record["geometry"]["centers_mean_cosine"] = centers_mean_cosine(net.centers.detach().float().cpu().numpy())
    return record


def flat_scalars(record, class_names):
    """``diag/<prediction>/<measure>[/<class>]`` -> float, for log_dict, TensorBoard and W&B."""
    out = {}
    for head, q in record["pseudo_labels"].items():
        for key, value in q.items():
            if isinstance(value, list):
                if key != "support":
                    out.update({f"diag/{head}/{key}/{n}": float(v) for n, v in zip(class_names, value)
                                if v is not None})
            elif key != "threshold":
                out[f"diag/{head}/{key}"] = float(value)
    out.update({f"diag/{key}": float(v) for key, v in record["geometry"].items()})
    return out


# -- the hook ---------------------------------------------------------------------------------------------------

#: the geometry scalars of the training log line (all of them go to TensorBoard and W&B)
PROGRESS_GEOMETRY = ("diag/nc_mean_cosine", "diag/nc1")


def _in_progress_line(key) -> bool:
    """A macro measure of a prediction (``diag/<prediction>/<macro_...>``) or one of :data:`PROGRESS_GEOMETRY`."""
    parts = key.split("/")
    return (len(parts) == 3 and "macro" in parts[2]) or key in PROGRESS_GEOMETRY

def read_records(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_records(path, records):
    with atomic_output(path, ".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def diagnostics_loader(algorithm, max_samples, seed):
    """A fixed subset of the unlabeled set, with its labels and the evaluation transform; None when unlabeled."""
    datasets = algorithm.dataset_dict or {}
    ulb, ev = datasets.get("train_ulb"), datasets.get("eval")
    if ulb is None or ev is None or getattr(ulb, "targets", None) is None:
        return None
    targets = np.asarray(ulb.targets)
    candidates = np.flatnonzero(targets >= 0)
    if len(candidates) == 0:
        return None
    if max_samples and len(candidates) > max_samples:
        candidates = np.sort(np.random.default_rng(seed).choice(candidates, size=max_samples, replace=False))
    shown = copy.copy(ulb)
    shown.is_ulb, shown.transform, shown.strong_transform = False, ev.transform, None
    subset = torch.utils.data.Subset(shown, candidates.tolist())
    return torch.utils.data.DataLoader(subset, batch_size=algorithm.args.eval_batch_size, shuffle=False,
                                       num_workers=algorithm.args.num_workers)


class DiagnosticsHook(Hook):
    """Runs :func:`diagnose` every ``every`` iterations and at the last one (main process only)."""

    #: nothing to checkpoint: the settings come from the config, ``records`` is re-read from diagnostics.jsonl
    checkpoint_attrs = ()

    def __init__(self, every, max_samples):
        super().__init__()
        self.every, self.max_samples = every, max_samples
        self.loader, self.records = None, []

    def _path(self, algorithm):
        return os.path.join(algorithm.save_dir, algorithm.save_name, DIAG_FILE)

    def before_run(self, algorithm):
        if not is_main_process(algorithm):
            return
        self.loader = diagnostics_loader(algorithm, self.max_samples, algorithm.args.seed)
        if self.loader is None:
            algorithm.print_fn("[remop-usb] diagnostics: the unlabeled set keeps no labels here; no diagnostics")
            return
        # a resumed run keeps the records up to its checkpoint
        self.records = [r for r in read_records(self._path(algorithm)) if r["it"] <= algorithm.it]

    def after_train_step(self, algorithm):
        if self.loader is None or not (self.every_n_iters(algorithm, self.every) or self.is_last_iter(algorithm)):
            return
        from .results import class_names_of

        record = diagnose(algorithm, self.loader)
        self.records.append(record)
        _write_records(self._path(algorithm), self.records)
        names = class_names_of(algorithm)
        scalars = flat_scalars(record, names)
        algorithm.remop_diagnostics = scalars
        algorithm.log_dict.update({k: v for k, v in scalars.items() if _in_progress_line(k)})
        if algorithm.tb_log is not None:
            algorithm.tb_log.update(scalars, algorithm.it)


def attach_diagnostics(algorithm):
    """Register the hook when ``diagnostics: True`` (priority LOW: after evaluation, before logging and W&B)."""
    args = algorithm.args
    if not getattr(args, "diagnostics", False):
        return None
    hook = DiagnosticsHook(args.diag_every or args.num_eval_iter, args.diag_max_samples)
    algorithm.register_hook(hook, "DiagnosticsHook", "LOW")
    return hook
