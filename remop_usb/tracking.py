"""Weights & Biases tracking (``use_wandb: True``), offline-safe, replacing USB 0.3.2's WANDBHook.

One W&B run per training run, so that W&B's run table is the leaderboard:

- group = the setting ``<dataset>-N<num_labels>-g<lb_imb_ratio>`` (or ``wandb_group``; ``remop-usb sweep`` passes the
  grid's setting name), tag = the method (``fixmatch+remop``; the sweep adds the grid's method name) plus
  ``wandb_tags``; name ``<method>-<group>-seed<seed>``; project ``wandb_project``;
- config = the run's ``config.json`` plus ``split_sha256``, ``setting`` and ``method``;
- history: every scalar of USB's ``log_dict`` every ``num_log_iter`` iterations and at evaluations, and the
  diagnostics (:mod:`remop_usb.diagnostics`: pseudo-label quality, neural-collapse geometry) when they run;
- summary (written from results.json when training ends): ``best/acc``, ``best/mean_class_acc``, ``best/it``,
  ``last/acc``, ``last/mean_class_acc`` for the primary head, ``<best|last>/<head>/acc|mean_class_acc`` and
  ``<best|last>/<head>/per_class/<class>`` for every head, ``split_sha256`` -- on the run's test set when it has
  one (the cross-dataset test), as the leaderboard reports it, the eval split then under ``<best|last>/eval/``;
  a per-class accuracy table and
  ``wandb.plot.confusion_matrix`` for best and last; the run's plots as images.

``best`` is selected on the test split, as in the paper (see results.json's ``selection``); ``last`` is not.

USB's own hook logs a fixed list of keys only, reads the project from the save-dir path, starts a W&B run on every
DDP process, finishes before results exist and has no group. It works offline; without an account and without
``WANDB_MODE=offline`` wandb.init fails -- here that is one line telling to set ``WANDB_MODE=offline``.
"""

from __future__ import annotations

import os

import numpy as np
from semilearn.core.hooks import Hook

from . import runconfig
from .errors import UserError
from .fileio import read_json, write_json_atomic
from .usb_compat.distributed import is_main_process

HOOK_NAME = "WandbTrackingHook"
RUN_ID_FILE = "wandb_run.json"


def group_of(args):
    return args.wandb_group or runconfig.setting_name(args)


def tags_of(args):
    extra = [t.strip() for t in (args.wandb_tags or "").split(",") if t.strip()]
    return list(dict.fromkeys([runconfig.method_name(args)] + extra))


def _run_id(save_path, resume):
    """The run's W&B id, kept in the save dir so that a resumed training run continues the same W&B run."""
    import secrets

    path = os.path.join(save_path, RUN_ID_FILE)
    if resume and os.path.exists(path):
        return read_json(path, "use_wandb")["id"]
    run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
    write_json_atomic(path, {"id": run_id})
    return run_id


def start_run(args, save_path):
    import wandb

    config = runconfig.read_config(save_path, "use_wandb") or runconfig.snapshot(args)
    group, method = group_of(args), runconfig.method_name(args)
    config.update(split_sha256=getattr(args, "split_sha256", None), setting=group, method=method)
    try:
        return wandb.init(project=args.wandb_project, group=group, tags=tags_of(args), config=config,
                          name=f"{method}-{group}-seed{args.seed}", dir=save_path,
                          id=_run_id(save_path, args.resume), resume="allow" if args.resume else None)
    except wandb.errors.Error as err:
        raise UserError(f"use_wandb: W&B could not start ({str(err).splitlines()[0] if str(err) else err!r}); "
                        f"to log without an account or network set WANDB_MODE=offline") from None


def _scalars(values):
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTrackingHook(Hook):
    """Registered by USB in place of its WANDBHook when ``use_wandb: True`` (:func:`install`). Nothing
    happens after the run: the W&B run stays open until :func:`finish` has results.json's figures."""

    def __init__(self):
        super().__init__()
        self.run = None

    def before_run(self, algorithm):
        if is_main_process(algorithm):
            self.run = start_run(algorithm.args, os.path.join(algorithm.save_dir, algorithm.save_name))

    def after_train_step(self, algorithm):
        if self.run is None:
            return
        step = int(algorithm.it) + 1  # iterations completed, as in diagnostics.jsonl
        values = {}
        if self.every_n_iters(algorithm, algorithm.num_log_iter) or self.every_n_iters(algorithm,
                                                                                      algorithm.num_eval_iter):
            values.update(_scalars(algorithm.log_dict))
        diag = getattr(algorithm, "remop_diagnostics", None)
        if diag:
            values.update(diag)
            algorithm.remop_diagnostics = None
        if values:
            self.run.log(values, step=step)


def install():
    """Point USB's WANDBHook at :class:`WandbTrackingHook` (:mod:`remop_usb.usb_compat.wandb`); the launcher calls
    it before it builds an algorithm."""
    from .usb_compat.wandb import install_hook

    install_hook(WandbTrackingHook)


def summary_values(summary):
    """The W&B summary of a results.json content (see the module docstring)."""
    from .results import reported_heads

    out = {"split_sha256": summary.get("split_sha256")}
    primary = summary["primary_head"]
    for which in ("best", "last"):
        entry = summary.get(which)
        if not entry:
            continue
        out[f"{which}/it"] = entry["it"]
        if entry.get("test_heads"):  # the leaderboard reports the test set; the eval split beside it
            out.update({f"{which}/eval/{head}/{key}": report[metric] for head, report in entry["heads"].items()
                        for key, metric in (("acc", "overall_acc"), ("mean_class_acc", "mean_class_acc"))})
        for head, report in reported_heads(entry).items():
            prefixes = [f"{which}/{head}"] + ([which] if head == primary else [])
            for prefix in prefixes:
                out[f"{prefix}/acc"] = report["overall_acc"]
                out[f"{prefix}/mean_class_acc"] = report["mean_class_acc"]
            out.update({f"{which}/{head}/per_class/{name}": acc for name, acc in report["per_class_acc"].items()
                        if acc is not None})
    return out


def _confusion_lists(matrix):
    """(y_true, preds), lists of ints, with each (true, predicted) pair as often as the confusion matrix counts it."""
    cm = np.asarray(matrix, dtype=np.int64).reshape(len(matrix), len(matrix))
    k = len(cm)
    return np.repeat(np.arange(k), cm.sum(1)).tolist(), np.repeat(np.tile(np.arange(k), k), cm.ravel()).tolist()


def _tables(summary):
    import wandb

    names = summary["class_names"]
    table = wandb.Table(columns=["checkpoint", "head", "class", "accuracy"])
    logged = {}
    for which in ("best", "last"):
        entry = summary.get(which)
        if not entry:
            continue
        for head, report in entry["heads"].items():
            for name, acc in report["per_class_acc"].items():
                table.add_data(which, head, name, acc)
        report = entry["heads"][summary["primary_head"]]  # the eval split: its confusion covers every class
        y_true, preds = _confusion_lists(report["confusion_matrix"])
        logged[f"confusion/{which}"] = wandb.plot.confusion_matrix(
            y_true=y_true, preds=preds, class_names=names,
            title=f"{which} checkpoint, {summary['primary_head']} head (rows: true)")
    logged["per_class_accuracy"] = table
    return logged


def finish(algorithm, summary, figures=None):
    """Write the summary, tables and images of a finished run and close its W&B run (no-op without W&B)."""
    hook = algorithm.hooks_dict.get(HOOK_NAME)
    if hook is None or hook.run is None:
        return
    import wandb

    run, hook.run = hook.run, None
    if summary is not None:
        run.summary.update(summary_values(summary))
        logged = _tables(summary)
        logged.update({f"plots/{name}": wandb.Image(path) for name, path in (figures or {}).items()})
        run.log(logged)
    run.finish(exit_code=0)
