"""USB's ``AlgorithmBase.evaluate``, replaced by :func:`remop_usb.evaluation.evaluate_heads`.

=================================================  =============================================================
quirk in 0.3.2                                     what we do
=================================================  =============================================================
every batch moved with ``.cuda(self.gpu)``         :func:`remop_usb.evaluation.predict` moves it to the
                                                   algorithm's device (CPU or GPU)
one head, ``out_key`` (ABC's override: its         every head of ``prediction_heads``: the primary under USB's
  auxiliary head only)                               keys (model selection), the others as
                                                   ``eval/<head>/top-1-acc`` and ``eval/<head>/balanced_acc``
``eval/loss``: cross-entropy of ``out_key``'s      the primary head's (``remop_usb.evaluation.head_loss``:
  output, read as logits                           cross-entropy of logits, NLL of a probability head
                                                   such as ReMoP's mixture)
precision / recall / F1 warn on a class never      ``zero_division=0``
  predicted
rows labeled -1 are left out of the loss only      left out of the metrics as well
confusion matrix normalised per true class         counts over every class, printed
=================================================  =============================================================

:func:`evaluate` keeps USB's signature and keys (``eval/loss``, ``eval/top-1-acc``, ``eval/balanced_acc``,
``eval/precision``, ``eval/recall``, ``eval/F1``; ``eval/logits`` with ``return_logits``), so USB's EvaluationHook
and Adsh's ``evaluate("eval_ulb", return_logits=True)`` keep working.
"""

from __future__ import annotations


def evaluate(self, eval_dest="eval", out_key="logits", return_logits=False):
    """Drop-in for ``AlgorithmBase.evaluate``: same keys, every head, no ``.cuda``."""
    from ..evaluation import evaluate_heads

    result, primary = evaluate_heads(self, eval_dest, out_key)
    if return_logits:
        result[f"{eval_dest}/logits"] = primary
    return result


def install():
    from semilearn.core.algorithmbase import AlgorithmBase

    AlgorithmBase.evaluate = evaluate
