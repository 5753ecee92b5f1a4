"""``results.json``: what a run achieved, for the best and the last checkpoint, every prediction head.

Model selection is explicit. ``best`` is the checkpoint with the highest ``eval/top-1-acc`` seen during training --
as in the paper and every reference implementation, ``eval`` is the official test split, so ``best`` is selected on
test data. ``last`` is the final checkpoint, which involves no selection. Both are evaluated with their EMA weights.
"""

from __future__ import annotations

import os

from datasets_fer.labels import class_names

from .evaluation import classification_report, heads_of, output_keys, predict
from .fileio import write_json_atomic


def _evaluate_checkpoint(algorithm, path, names):
    """Load ``path`` (model and EMA model) and report every prediction head on the eval split."""
    algorithm.load_model(path)
    heads = heads_of(algorithm)
    y_true, outputs = predict(algorithm, "eval", output_keys(heads))
    return {name: classification_report(y_true, outputs[key].argmax(axis=1), names) for name, key in heads}


def _names_for(algorithm):
    try:
        return class_names(algorithm.num_classes)
    except ValueError:
        return [str(i) for i in range(algorithm.num_classes)]


def write_results(algorithm, save_path):
    """Evaluate latest_model.pth and model_best.pth, write results.json atomically, return its content."""
    args = algorithm.args
    names = _names_for(algorithm)
    summary = {
        "algorithm": args.algorithm,
        "imb_algorithm": args.imb_algorithm,
        "dataset": args.dataset,
        "seed": args.seed,
        "num_labels": args.num_labels,
        "lb_imb_ratio": args.lb_imb_ratio,
        "split_sha256": getattr(args, "split_sha256", None),
        "num_train_iter": args.num_train_iter,
        "class_names": names,
        "primary_head": heads_of(algorithm)[0][0],
        "selection": "best = highest eval/top-1-acc during training, eval = the test split (as in the paper); "
                     "last = final checkpoint",
    }
    summary["last"] = {"it": int(args.num_train_iter),
                       "heads": _evaluate_checkpoint(algorithm, os.path.join(save_path, "latest_model.pth"), names)}
    best_path = os.path.join(save_path, "model_best.pth")
    summary["best"] = None
    if os.path.exists(best_path):
        heads = _evaluate_checkpoint(algorithm, best_path, names)
        summary["best"] = {"it": int(algorithm.best_it) + 1, "heads": heads}  # iterations done at that checkpoint
    write_json_atomic(os.path.join(save_path, "results.json"), summary, indent=2)
    return summary


def one_line(summary):
    """``fixmatch+remop rafdb seed 0 split 1a2b3c4d | best@900 mixture 71.2/55.1 linear 70.0/52.3 | last ...``."""
    def part(tag, entry):
        if not entry:
            return f"{tag}: none"
        heads = " ".join(f"{h} {r['overall_acc']:.2f}/{r['mean_class_acc']:.2f}" for h, r in entry["heads"].items())
        return f"{tag}@{entry['it']} {heads}"

    name = summary["algorithm"] + (f"+{summary['imb_algorithm']}" if summary["imb_algorithm"] else "")
    sha = (summary["split_sha256"] or "-")[:12]
    return (f"[remop-usb] {name} {summary['dataset']} seed {summary['seed']} split {sha} | "
            f"{part('best', summary['best'])} | {part('last', summary['last'])} (overall/mean class acc, %)")
