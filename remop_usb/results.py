"""``results.json``: what a run achieved, for the best and the last checkpoint, every prediction head.

Model selection is explicit. ``best`` is the checkpoint with the highest ``eval/top-1-acc`` seen during training --
as in the paper and every reference implementation, ``eval`` is the official test split, so ``best`` is selected on
test data (``eval_split: valid`` selects on FERPlus's validation split instead). ``last`` is the final checkpoint,
which involves no selection. Both are evaluated with their EMA weights.

A run with a USB ``test`` set -- the cross-dataset test (``test_dataset``, e.g. train RAF-DB, test CK+) or, with
``eval_split: valid``, the dataset's own test split -- also reports, for each checkpoint and head, ``test_heads``:
overall accuracy, mean class accuracy and per-class accuracy over the classes the test set shares with the model
(``test_set.shared_classes``), and the confusion matrix over the model's classes. ``test_set`` describes it.
"""

from __future__ import annotations

import os

import numpy as np

from datasets_fer.labels import class_names

from .fileio import write_json_atomic
from .runconfig import method_name

# .evaluation (torch, scikit-learn) is imported where a run is evaluated: readers of results.json stay cheap

SPLITS = ("auto", "eval", "test")


def reported_heads(entry, split="auto"):
    """A checkpoint's per-head reports: on the run's test set (``test_heads``: the cross-dataset test, or the test
    split when the eval split is ``valid``) or on its eval split (``heads``); ``auto``: the test set when the run
    has one. None when the run has no such reports."""
    if split == "test" or (split == "auto" and entry.get("test_heads")):
        return entry.get("test_heads")
    return entry.get("heads")


def head_name(summary, head="primary"):
    """The head ``head`` names in a results.json content: ``primary`` is the run's own primary head."""
    return summary["primary_head"] if head == "primary" else head


def _over_classes(report, classes):
    """``report`` with per-class and mean class accuracy restricted to ``classes`` (None: unchanged)."""
    if classes is None:
        return report
    per_class = {n: report["per_class_acc"][n] for n in classes}
    present = [v for v in per_class.values() if v is not None]
    return {**report, "per_class_acc": per_class, "mean_class_acc": float(np.mean(present)) if present else 0.0}


def _report_heads(algorithm, dest, heads, names, classes=None):
    from .evaluation import classification_report, output_keys, predict

    y_true, outputs = predict(algorithm, dest, output_keys(heads))
    return {name: _over_classes(classification_report(y_true, outputs[key].argmax(axis=1), names), classes)
            for name, key in heads}


def _evaluate_checkpoint(algorithm, path, names, test_set=None):
    """Load ``path`` (model and EMA model) and report every prediction head on the eval split, and on the test set
    over its shared classes when the run has one: ``{"heads": ..., "test_heads": ...}``."""
    from .evaluation import heads_of

    algorithm.load_model(path)
    heads = heads_of(algorithm)
    entry = {"heads": _report_heads(algorithm, "eval", heads, names)}
    if test_set is not None:
        entry["test_heads"] = _report_heads(algorithm, "test", heads, names, test_set["shared_classes"])
    return entry


def _test_set(algorithm, names):
    """The description of the run's USB test set (the FER builder attaches it), or None without one."""
    if "test" not in (getattr(algorithm, "loader_dict", None) or {}):
        return None
    dataset = (getattr(algorithm, "dataset_dict", None) or {}).get("test")
    return getattr(dataset, "report", None) or {"dataset": algorithm.args.dataset, "split": "test",
                                                "shared_classes": list(names)}


def class_names_of(algorithm):
    try:
        return class_names(algorithm.num_classes)
    except ValueError:
        return [str(i) for i in range(algorithm.num_classes)]


def summarize(algorithm, save_path):
    """Evaluate latest_model.pth and model_best.pth: the content of results.json."""
    from .evaluation import heads_of

    args = algorithm.args
    names = class_names_of(algorithm)
    eval_split = getattr(args, "eval_split", "test")
    summary = {
        "algorithm": args.algorithm,
        "imb_algorithm": args.imb_algorithm,
        "dataset": args.dataset,
        "seed": args.seed,
        "num_labels": args.num_labels,
        "lb_imb_ratio": args.lb_imb_ratio,
        "ulb_num_labels": getattr(args, "ulb_num_labels", None),
        "ulb_imb_ratio": getattr(args, "ulb_imb_ratio", None),
        "split_sha256": getattr(args, "split_sha256", None),
        "ulb_loss_ratio": getattr(args, "ulb_loss_ratio", None),  # 0: the leaderboard labels the row (ulb weight 0)
        "num_train_iter": args.num_train_iter,
        "class_names": names,
        "primary_head": heads_of(algorithm)[0][0],
        "eval_split": eval_split,
        "selection": f"best = highest eval/top-1-acc during training, eval = the {eval_split} split"
                     f"{' (as in the paper)' if eval_split == 'test' else ''}; last = final checkpoint",
    }
    test_set = _test_set(algorithm, names)
    summary["test_set"] = test_set
    summary["last"] = {"it": int(args.num_train_iter),
                       **_evaluate_checkpoint(algorithm, os.path.join(save_path, "latest_model.pth"), names, test_set)}
    best_path = os.path.join(save_path, "model_best.pth")
    from .pseudo_labels import run_summary  # imports torch and USB: not at module level (sweep --status, leaderboard)

    summary["pseudo_labels"] = run_summary(algorithm)
    summary["best"] = None
    if os.path.exists(best_path):
        entry = _evaluate_checkpoint(algorithm, best_path, names, test_set)
        summary["best"] = {"it": int(algorithm.best_it) + 1, **entry}  # iterations done at that checkpoint
    return summary


def write_results(summary, save_path):
    """Write results.json atomically: the run's last file, which marks it finished (the sweep skips it)."""
    return write_json_atomic(os.path.join(save_path, "results.json"), summary, indent=2)


def one_line(summary):
    """``fixmatch+remop rafdb seed 0 split 1a2b3c4d | best@900 mixture 71.2/55.1 linear 70.0/52.3 | last ...``;
    with a test set each checkpoint adds e.g. ``[ckplus test: mixture 60.1/50.2 linear 58.0/49.9]``."""
    def heads(reports):
        return " ".join(f"{h} {r['overall_acc']:.2f}/{r['mean_class_acc']:.2f}" for h, r in reports.items())

    def part(tag, entry):
        if not entry:
            return f"{tag}: none"
        test = summary.get("test_set")
        extra = f" [{test['dataset']} {test['split']}: {heads(entry['test_heads'])}]" if entry.get("test_heads") else ""
        return f"{tag}@{entry['it']} {heads(entry['heads'])}{extra}"

    def unlabeled(figures):
        final = {s: f["final"] for s, f in sorted((figures or {}).items()) if f.get("final")}
        if not final:
            return ""
        acc = lambda f: "-" if f["acc"] is None else f"{100 * f['acc']:.1f}"  # noqa: E731
        rows = ", ".join(f"{s} mask {f['mask']:.2f} acc {acc(f)}" for s, f in final.items())
        return f" | pseudo-labels (last 10% of steps) {rows}"

    sha = (summary["split_sha256"] or "-")[:12]
    return (f"[remop-usb] {method_name(summary)} {summary['dataset']} seed {summary['seed']} split {sha} | "
            f"{part('best', summary['best'])} | {part('last', summary['last'])} (overall/mean class acc, %)"
            f"{unlabeled(summary.get('pseudo_labels'))}")
