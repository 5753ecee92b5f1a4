"""Evaluation of every prediction head in one pass, on any device (:func:`evaluate_heads`, which
:mod:`remop_usb.usb_compat.evaluation` installs as USB's ``evaluate``).

An algorithm may expose several predictions: ReMoP's mixture and linear classifier, ABC's auxiliary head. They are
declared as ``prediction_heads = (("mixture", "mixture"), ("linear", "logits"))`` -- (name, key of the model's
output dict), primary first; an algorithm without the attribute has the one head its ``out_key`` names. The primary
head drives USB's ``eval/top-1-acc`` (and so model selection); the others are logged as ``eval/<head>/...``.
A wrapper of a base learner (ReMoP) declares its heads as :class:`WithLearnerHeads`: its own, then the learner's
test-time heads that read another output (ReMoP on ACR: ``mixture``, ``linear``, ``balanced``; on CDMAD: ``mixture``,
``linear``, ``debiased``), so results.json and the log also show what the learner alone would predict.

``eval/loss`` is the primary head's: the cross-entropy of its logits, or, for an output that is already a probability
row (:data:`PROBABILITY_OUTPUTS`: ReMoP's ``mixture``), the negative log-likelihood of the row clamped at
:data:`PROBABILITY_FLOOR` and renormalised to sum 1 (:func:`head_loss`). With ``remop_mix: prob`` (Eq. 6) a mixture
row need not be a distribution: the cosine term can make an entry negative and the row sum differ from 1; the clamp
keeps the log finite (a true class at or below the floor costs about -log(1e-6) = 13.8) and the renormalisation
turns the row into the distribution it ranks the classes by. For a softmax row (``remop_mix: logit``) both are no-ops
above the floor, and the loss is the cross-entropy of the logits it is the softmax of.

The EMA model (``algorithm.ema_model``, kept in sync by USB's EMAHook) is what gets evaluated, so a checkpoint loaded
with ``load_model`` is evaluated with its own EMA weights.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)


#: model outputs that are probability rows, not logits (ReMoP's FeatureClassifier: the Eq. 6 mixture)
PROBABILITY_OUTPUTS = frozenset({"mixture"})
#: the floor a probability row is clamped at before its log (:func:`head_loss`)
PROBABILITY_FLOOR = 1e-6


def head_loss(output, y_true, key) -> float:
    """The mean loss of the head whose model output is ``key`` over the rows labeled >= 0: cross-entropy of logits,
    or for :data:`PROBABILITY_OUTPUTS` the NLL of the row clamped at :data:`PROBABILITY_FLOOR` and renormalised."""
    output, y_true = torch.as_tensor(output).double(), torch.as_tensor(y_true).long()
    if key in PROBABILITY_OUTPUTS:
        probs = output.clamp_min(PROBABILITY_FLOOR)
        return F.nll_loss(torch.log(probs / probs.sum(dim=1, keepdim=True)), y_true, ignore_index=-1).item()
    return F.cross_entropy(output, y_true, ignore_index=-1).item()


def merged_heads(own, learner):
    """``own`` heads, then those of ``learner`` (None: none) whose output key no head of ``own`` reads; such a head
    whose name ``own`` already uses is renamed ``learner_<name>``."""
    heads = list(own)
    names, keys = {name for name, _ in heads}, {key for _, key in heads}
    for name, key in learner or ():
        if key not in keys:
            heads.append((f"learner_{name}" if name in names else name, key))
            names.add(heads[-1][0])
            keys.add(key)
    return tuple(heads)


class WithLearnerHeads:
    """``prediction_heads`` of a wrapper class (ReMoP) that sits before its base learner in the algorithm's MRO
    (USB's ``class DummyClass(imb_algorithm, algorithm)``): its own heads, primary first, followed by the
    ``prediction_heads`` the classes after it declare (:func:`merged_heads`)."""

    def __init__(self, own):
        self.own = tuple(own)

    def __set_name__(self, owner, name):
        self.owner, self.name = owner, name

    def __get__(self, instance, cls=None):
        cls = type(instance) if cls is None else cls
        return merged_heads(self.own, getattr(super(self.owner, cls), self.name, None))


def heads_of(algorithm, out_key="logits"):
    heads = getattr(algorithm, "prediction_heads", None)
    if heads:
        return list(heads)
    return [("linear" if out_key == "logits" else out_key, out_key)]


def output_keys(heads):
    """The distinct model-output keys the heads read, in order."""
    return list(dict.fromkeys(key for _, key in heads))


@contextlib.contextmanager
def eval_mode(model, algorithm=None):
    """``model`` in eval mode (and inside ``algorithm``'s ``eval_context``, e.g. ReMoP's, when it has one); its
    training mode is restored on leaving, also after an error. Gradients are the caller's business."""
    context = getattr(algorithm, "eval_context", contextlib.nullcontext)
    was_training = model.training
    model.eval()
    try:
        with context():
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(algorithm, dest, keys):
    """Run the EMA model over loader ``dest``; returns (y_true, {key: N x K numpy array})."""
    from .devices import device_of

    device = device_of(algorithm)
    y_true, outputs = [], {k: [] for k in keys}
    with eval_mode(algorithm.ema_model, algorithm) as model:
        for data in algorithm.loader_dict[dest]:
            x = data["x_lb"]
            x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
            out = model(x)
            for k in keys:
                outputs[k].append(out[k].float().cpu())
            y_true.append(data["y_lb"].cpu())
    y = torch.cat(y_true).numpy() if y_true else np.zeros(0, dtype=np.int64)
    return y, {k: (torch.cat(v).numpy() if v else np.zeros((0, algorithm.num_classes))) for k, v in outputs.items()}


def evaluate_heads(algorithm, eval_dest="eval", out_key="logits"):
    """Every head on loader ``eval_dest``: ``(metrics, primary head's logits)``, the metrics under USB's keys
    (``eval/loss`` -- :func:`head_loss` --, ``eval/top-1-acc``, ...: the primary head) and ``eval/<head>/top-1-acc``, ``.../balanced_acc`` for the others."""
    heads = heads_of(algorithm, out_key)
    keys = output_keys(heads)
    y_true, outputs = predict(algorithm, eval_dest, keys)
    primary = outputs[heads[0][1]]
    y_pred = primary.argmax(axis=1)
    labeled = y_true >= 0
    result = {
        f"{eval_dest}/loss": head_loss(primary, y_true, heads[0][1]),
        f"{eval_dest}/top-1-acc": accuracy_score(y_true[labeled], y_pred[labeled]),
        f"{eval_dest}/balanced_acc": balanced_accuracy_score(y_true[labeled], y_pred[labeled]),
        f"{eval_dest}/precision": precision_score(y_true[labeled], y_pred[labeled], average="macro", zero_division=0),
        f"{eval_dest}/recall": recall_score(y_true[labeled], y_pred[labeled], average="macro", zero_division=0),
        f"{eval_dest}/F1": f1_score(y_true[labeled], y_pred[labeled], average="macro", zero_division=0),
    }
    for name, key in heads[1:]:
        pred = outputs[key].argmax(axis=1)
        result[f"{eval_dest}/{name}/top-1-acc"] = accuracy_score(y_true[labeled], pred[labeled])
        result[f"{eval_dest}/{name}/balanced_acc"] = balanced_accuracy_score(y_true[labeled], pred[labeled])
    cf = confusion_matrix(y_true[labeled], y_pred[labeled], labels=list(range(algorithm.num_classes)))
    algorithm.print_fn("confusion matrix (rows: true, cols: predicted):\n" + np.array_str(cf))
    return result, primary


def classification_report(y_true, y_pred, class_names):
    """Overall accuracy, mean class accuracy, per-class accuracy and the confusion matrix (counts), in percent."""
    k = len(class_names)
    cf = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    support = cf.sum(axis=1)
    per_class = {name: (100.0 * cf[i, i] / support[i] if support[i] else None) for i, name in enumerate(class_names)}
    present = [v for v in per_class.values() if v is not None]
    return {
        "overall_acc": 100.0 * float(np.trace(cf)) / max(1, int(cf.sum())),
        "mean_class_acc": float(np.mean(present)) if present else 0.0,
        "per_class_acc": per_class,
        "confusion_matrix": cf.tolist(),
        "num_samples": int(cf.sum()),
    }
