"""``remop-usb leaderboard DIR [--checkpoint best|last] [--head primary|NAME] [--split auto|eval|test] [--no_plots]
[--published [--reference METHOD]]``.

Reads every ``DIR/<setting>/<method>/seed<k>/results.json`` (the layout ``remop-usb sweep`` writes) and prints the
paper's table: rows = methods, columns = settings, each cell ``overall / mean class accuracy`` as
``mean ± std`` over the seeds present, with the number of seeds ``(n=3)``; the best mean of each column in bold
(overall and mean class separately; ties all bold). The same table goes to ``DIR/leaderboard.md`` (with other
``--checkpoint``/``--head``/``--split`` than the defaults ``DIR/leaderboard_<those>.md``, e.g. ``_last``), and one row per
cell with the numbers (means, stds, n, seeds) to ``DIR/leaderboard.csv``; with plots, the per-class accuracy of
every method (mean over seeds) per setting to ``DIR/leaderboard_per_class_<setting>.png``, and when the rows differ
only in ``remop_beta`` (each run's config.json; a Fig. 4 sweep such as ``config/grids/fig4_beta.yaml``) overall and
mean class accuracy, mean ± std over seeds, against the trained beta, one line per setting, to ``DIR/beta.png``.
A results.json that cannot be read, is no JSON object or names no ``primary_head`` stops the leaderboard with one
line naming the file.

- Std is the SAMPLE standard deviation over seeds (ddof=1, numpy's ``std(ddof=1)``): the estimate of the
  seed-to-seed spread. The paper says "mean and standard deviation" over three seeds without saying which; the
  population std (ddof=0) would be sqrt(2/3) = 0.82 times ours with n = 3. With one seed there is no std ("-").
- ``--checkpoint best`` (default, the paper's protocol) is the checkpoint selected on the test split;
  ``last`` involves no selection.
- ``--head primary`` reports each run's own primary head (ReMoP: the mixture; ABC: its auxiliary head; otherwise
  the linear classifier); ``--head linear`` compares linear classifiers; runs without the head are left out and
  listed.
- Methods are compared on identical splits: runs of one setting and seed must carry the same ``split_sha256``,
  otherwise the leaderboard stops and names them. Runs of one setting must share dataset, N1 and gamma.
- ``--split auto`` (default) reports a run's test set when it has one -- the cross-dataset test (train RAF-DB,
  test CK+: results.json's ``test_heads``) or the test split of a run selecting on ``eval_split: valid`` -- and
  its eval split (the test split, in the paper's protocol) otherwise; ``eval`` / ``test`` force one.
- Order and labels of rows/columns come from ``DIR/sweep.json`` when present, then the remaining names sorted.
  A row is a method folder (a grid cell): a row whose runs all trained with ``ulb_loss_ratio`` 0 (results.json, else
  config.json; not Vanilla) gets `` (ulb weight 0)`` after its label, rows that would share a label are told apart
  by their folder (``FixMatch [fixmatch_b]``), and seeds of one row whose config.json differ in an identity key
  (``ulb_loss_ratio``, an ablation key, ...: :func:`~remop_usb.runconfig.differences`) stop the leaderboard with one
  line naming them, instead of being averaged.
- ``--published`` prints the README's layout instead (``DIR/leaderboard_published.md``): per setting, ``mean class
  (overall)`` accuracy as ``mean ± std`` with ``n=``, and the unlabeled path -- mask / pseudo-label accuracy (%) per
  source over the final tenth of each run, mean over its seeds (``none``: no unlabeled path). Each column has a
  reference row, marked ``(ref)``: the best mean class accuracy, or ``--reference METHOD`` (a folder or a label;
  files ``_ref-METHOD``). A cell whose gap in mean class accuracy to the reference is smaller than the larger of the
  two rows' sample stds -- within the seeds' spread -- is marked ``≈``; a legend line follows the table. The marks
  are decided on the printed (2-decimal) numbers, so a reader can check them; a one-seed row has no std (the
  reference's alone counts), and with no std on either side there is no mark.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from collections import defaultdict

import numpy as np

from ..errors import UserError
from ..fileio import atomic_output, read_json, write_text_atomic
from ..results import SPLITS, head_name, reported_heads
from ..runconfig import differences, identity, read_config, setting_name

_SEED_DIR = re.compile(r"^seed(-?\d+)$")


def find_runs(root):
    """[{setting, method, seed, path, results}] for every results.json under ``root``."""
    if not os.path.isdir(root):
        raise UserError(f"leaderboard: {root} is not a folder")
    runs = []
    for folder, _, files in os.walk(root):
        if "results.json" not in files:
            continue
        rel = os.path.relpath(folder, root).split(os.sep)
        match = _SEED_DIR.match(rel[-1]) if len(rel) == 3 else None
        if match is None:
            raise UserError(f"leaderboard: {os.path.join(folder, 'results.json')} is not at "
                            f"<setting>/<method>/seed<k>/results.json under {root} (the layout remop-usb sweep writes)")
        results = read_results(os.path.join(folder, "results.json"))
        runs.append({"setting": rel[0], "method": rel[1], "seed": int(match.group(1)), "path": folder,
                     "results": results, "config": read_config(folder, "leaderboard")})
    if not runs:
        raise UserError(f"leaderboard: no results.json under {root}")
    return runs


def read_results(path):
    """A run's results.json, which must name its ``primary_head`` (train.py writes it)."""
    results = read_json(path, "leaderboard")
    if not isinstance(results.get("primary_head"), str):
        raise UserError(f"leaderboard: {path}: no 'primary_head' (expected the name of the run's primary head, "
                        f"as train.py writes it)")
    return results


def check_splits(runs):
    """Every method of a (setting, seed) must have trained on the same split; a setting is one dataset/N1/gamma."""
    by_cell = defaultdict(list)
    by_setting = defaultdict(set)
    for r in runs:
        by_cell[(r["setting"], r["seed"])].append(r)
        by_setting[r["setting"]].add(setting_name(r["results"]))
    for (setting, seed), group in sorted(by_cell.items()):
        hashes = {r["results"].get("split_sha256") for r in group}
        if len(hashes) > 1:
            listed = ", ".join(f"{r['method']}/seed{seed} {str(r['results'].get('split_sha256'))[:12]}"
                               for r in group)
            raise UserError(f"leaderboard: setting {setting}, seed {seed}: the runs trained on different splits, "
                            f"refusing to compare them ({listed})")
    for setting, kinds in by_setting.items():
        if len(kinds) > 1:
            raise UserError(f"leaderboard: setting {setting} holds runs of different data settings "
                            f"(dataset, N1, gamma): {sorted(kinds)}")


def check_rows(runs):
    """The seeds of a row (one method folder of a setting) must be one experiment: their config.json agree on every
    identity key but the seed (:func:`~remop_usb.runconfig.differences`), so that runs with another
    ``ulb_loss_ratio`` or ablation key are not averaged into the row; runs without config.json are not compared."""
    by_row = defaultdict(list)
    for r in runs:
        if r["config"] is not None:
            by_row[(r["setting"], r["method"])].append(r)
    for (setting, method), group in sorted(by_row.items()):
        first, *others = sorted(group, key=lambda r: r["seed"])
        for other in others:
            diff = differences({**other["config"], "seed": None}, {**first["config"], "seed": None})
            if diff:
                raise UserError(f"leaderboard: {setting}/{method}: its seeds were trained with different "
                                f"configurations (seed{first['seed']} -> seed{other['seed']}: {'; '.join(diff)}), "
                                f"refusing to average them into one row; give each configuration its own method "
                                f"folder (a grid cell)")


def pick(results, checkpoint, head, split="auto"):
    """The report (overall, mean class and per-class accuracy) of one run's head, or the reason it has none."""
    entry = results.get(checkpoint)
    if not entry:
        return None, f"no {checkpoint} checkpoint"
    heads = reported_heads(entry, split)
    if heads is None:
        return None, f"no {split} set"
    name = head_name(results, head)
    report = heads.get(name)
    if report is None:
        return None, f"no head '{name}' (heads: {', '.join(heads)})"
    return report, None


def mean_std(values):
    """Mean and sample std (ddof=1; None for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def aggregate(runs, checkpoint, head, split="auto"):
    """{(method, setting): cell} and the runs left out with their reason. A cell: ``seeds`` (sorted), ``n``,
    ``overall`` and ``mean_class`` (mean, sample std), and ``runs``: the [(run, report)] counted, in ``runs``'
    order."""
    counted, left_out = defaultdict(list), []
    for r in runs:
        report, reason = pick(r["results"], checkpoint, head, split)
        if report is None:
            left_out.append(f"{r['setting']}/{r['method']}/seed{r['seed']}: {reason}")
        else:
            counted[(r["method"], r["setting"])].append((r, report))
    cells = {}
    for key, pairs in counted.items():
        rows = sorted((r["seed"], (report["overall_acc"], report["mean_class_acc"])) for r, report in pairs)
        overall, mean_class = zip(*(pair for _, pair in rows))
        cells[key] = {"seeds": [s for s, _ in rows], "n": len(rows), "overall": mean_std(overall),
                      "mean_class": mean_std(mean_class), "runs": pairs,
                      "unlabeled": unlabeled_figures([r["results"] for r, _ in pairs])}
    return cells, left_out


def unlabeled_figures(results):
    """{source: (mean mask, mean pseudo-label accuracy or None)} over runs' results.json ``pseudo_labels`` finals
    (the final tenth of each run; :mod:`remop_usb.pseudo_labels`); a run without a source does not count for it."""
    out = {}
    sources = sorted({s for r in results for s in (r.get("pseudo_labels") or {})})
    for source in sources:
        finals = [((r.get("pseudo_labels") or {}).get(source) or {}).get("final") for r in results]
        finals = [f for f in finals if f]
        if finals:
            accs = [f["acc"] for f in finals if f["acc"] is not None]
            out[source] = (float(np.mean([f["mask"] for f in finals])), float(np.mean(accs)) if accs else None)
    return out


def unlabeled_text(figures, empty="-"):
    """``pl 0.56 / 98.3; remop 0.51 / 99.3``: mean mask and mean pseudo-label accuracy (%, '-' when nothing passed)
    of each source of :func:`unlabeled_figures`; ``empty`` without any."""
    if not figures:
        return empty
    acc = lambda a: "-" if a is None else f"{100 * a:.1f}"  # noqa: E731
    return "; ".join(f"{s} {m:.2f} / {acc(a)}" for s, (m, a) in figures.items())


def unlabeled_markdown(cells, methods, labels, settings):
    """The unlabeled path of each cell: mean mask and mean pseudo-label accuracy (%) of each source, or '-'."""
    lines = ["Unlabeled path over the final tenth of each run, mean over its seeds: mask / pseudo-label accuracy (%) "
             "per source (pl: the unsupervised loss; remop: ReMoP's confident mixture rows).", "",
             "| Method | " + " | ".join(settings) + " |", "| --- |" + " --- |" * len(settings)]
    for m in methods:
        row = [unlabeled_text(cells[(m, s)]["unlabeled"]) if (m, s) in cells else "-" for s in settings]
        lines.append(f"| {labels[m]} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def order(root, runs):
    """(methods, labels, settings) in the sweep's order when DIR/sweep.json exists, then sorted."""
    methods, labels, settings = [], {}, []
    plan_path = os.path.join(root, "sweep.json")
    if os.path.exists(plan_path):
        plan = read_json(plan_path, "leaderboard")
        methods = [m["name"] for m in plan.get("methods", [])]
        labels = {m["name"]: m.get("label", m["name"]) for m in plan.get("methods", [])}
        settings = list(plan.get("settings", []))
    present_methods = {r["method"] for r in runs}
    present_settings = {r["setting"] for r in runs}
    methods = [m for m in methods if m in present_methods] + sorted(present_methods - set(methods))
    settings = [s for s in settings if s in present_settings] + sorted(present_settings - set(settings))
    return methods, {m: labels.get(m, m) for m in methods}, settings


#: appended to the label of a row whose runs all trained with ``ulb_loss_ratio`` 0
ZERO_WEIGHT = " (ulb weight 0)"


def _ulb_loss_ratio(run):
    """A run's unlabeled loss weight: results.json's ``ulb_loss_ratio``, else config.json's; None when neither says."""
    value = run["results"].get("ulb_loss_ratio")
    if value is None and run["config"] is not None:
        value = run["config"].get("ulb_loss_ratio")
    return value


def row_labels(labels, runs):
    """``labels`` with :data:`ZERO_WEIGHT` added to each row of a learner with an unlabeled loss (not
    ``supervised``) whose runs all say ``ulb_loss_ratio`` 0, then made distinct: a label that two rows would share
    names each row's method folder, ``FixMatch [fixmatch_b]``."""
    by_method = defaultdict(list)
    for r in runs:
        by_method[r["method"]].append(r)
    out = {}
    for m, label in labels.items():
        rows = by_method.get(m, [])
        weights = {_ulb_loss_ratio(r) for r in rows}
        semi = all(r["results"].get("algorithm") != "supervised" for r in rows)
        zero = rows and semi and weights == {0} and ZERO_WEIGHT.strip() not in label
        out[m] = label + ZERO_WEIGHT if zero else label
    shared = {label for label in out.values() if list(out.values()).count(label) > 1}
    return {m: f"{label} [{m}]" if label in shared else label for m, label in out.items()}


def _best(cells, settings, part):
    """{setting: best mean at 2 decimals} of ``part`` ('overall' | 'mean_class')."""
    best = {}
    for s in settings:
        means = [round(c[part][0], 2) for (m, cs), c in cells.items() if cs == s]
        if means:
            best[s] = max(means)
    return best


def _number(mean_std_pair, bold):
    mean, std = mean_std_pair
    text = f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} ± -"
    return f"**{text}**" if bold else text


def markdown(cells, methods, labels, settings, caption):
    best = {part: _best(cells, settings, part) for part in ("overall", "mean_class")}
    lines = [caption, "", "| Method | " + " | ".join(settings) + " |", "| --- |" + " --- |" * len(settings)]
    for m in methods:
        row = []
        for s in settings:
            c = cells.get((m, s))
            if c is None:
                row.append("-")
                continue
            parts = [_number(c[p], round(c[p][0], 2) == best[p].get(s)) for p in ("overall", "mean_class")]
            row.append(f"{parts[0]} / {parts[1]} (n={c['n']})")
        lines.append(f"| {labels[m]} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# -- the published layout (the README's tables) ---------------------------------------------------------------------

WITHIN_SPREAD, REFERENCE = "≈", "(ref)"


def _hundredths(value):
    """``value`` as printed (2 decimals), in hundredths: marks are decided on the numbers the table shows."""
    return round(float(f"{value:.2f}") * 100)


def within_spread(cell, ref):
    """Whether the gap in mean class accuracy between ``cell`` and the reference cell ``ref`` is smaller than the
    larger of their sample stds (those that exist: one seed has none); False when neither has one."""
    stds = [c["mean_class"][1] for c in (cell, ref) if c["mean_class"][1] is not None]
    if not stds:
        return False
    gap = abs(_hundredths(cell["mean_class"][0]) - _hundredths(ref["mean_class"][0]))
    return gap < max(_hundredths(std) for std in stds)


def references(cells, methods, settings, reference=None):
    """{setting: the method of its reference row, or None}: ``reference`` (a method) where it has a cell; without
    one, the row with the best mean class accuracy as printed (ties: the first row)."""
    out = {}
    for s in settings:
        rows = [m for m in methods if (m, s) in cells]
        if reference is not None:
            out[s] = reference if reference in rows else None
        else:
            out[s] = max(rows, key=lambda m: _hundredths(cells[(m, s)]["mean_class"][0]), default=None)
    return out


def published_cell(cell, mark=""):
    """``91.92 ± 0.79 (93.72 ± 0.51) n=3``: mean class (overall) accuracy, mean ± sample std, and the seed count;
    ``mark`` appended."""
    mean_class, overall = (_number(cell[p], False) for p in ("mean_class", "overall"))
    return f"{mean_class} ({overall}) n={cell['n']}" + (f" {mark}" if mark else "")


def _mark(cells, m, s, ref):
    if ref is None:
        return ""
    if m == ref:
        return REFERENCE
    return WITHIN_SPREAD if within_spread(cells[(m, s)], cells[(ref, s)]) else ""


def published_markdown(cells, methods, labels, settings, caption, reference=None):
    """The README's layout: per setting, mean class (overall) accuracy with n and the unlabeled path (mask /
    pseudo-label accuracy per source, 'none' without one); each cell within the seeds' spread of its column's
    reference row marked :data:`WITHIN_SPREAD`, the reference :data:`REFERENCE`, a legend under the table."""
    refs = references(cells, methods, settings, reference)
    header = [f"{s}: {part}" for s in settings for part in ("mean class (overall)", "mask / pl acc")]
    lines = [caption, "", "| Method | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(header)]
    for m in methods:
        row = []
        for s in settings:
            c = cells.get((m, s))
            row += ([published_cell(c, _mark(cells, m, s, refs[s])), unlabeled_text(c["unlabeled"], "none")]
                    if c else ["-", "-"])
        lines.append(f"| {labels[m]} | " + " | ".join(row) + " |")
    which = labels[reference] if reference is not None else "the row with the best mean class accuracy"
    lines += ["", f"{WITHIN_SPREAD}: the gap in mean class accuracy to the column's reference {REFERENCE} -- {which} "
                  f"-- is smaller than the larger of the two rows' sample stds (a one-seed row has none), i.e. "
                  f"within the seeds' spread."]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("setting", "method", "label", "checkpoint", "head", "n", "seeds", "overall_mean", "overall_std",
               "mean_class_mean", "mean_class_std")


def csv_rows(cells, methods, labels, settings, checkpoint, head):
    rows = []
    for m in methods:
        for s in settings:
            c = cells.get((m, s))
            if c is None:
                continue
            rows.append({"setting": s, "method": m, "label": labels[m], "checkpoint": checkpoint, "head": head,
                         "n": c["n"], "seeds": " ".join(map(str, c["seeds"])),
                         "overall_mean": f"{c['overall'][0]:.4f}",
                         "overall_std": "" if c["overall"][1] is None else f"{c['overall'][1]:.4f}",
                         "mean_class_mean": f"{c['mean_class'][0]:.4f}",
                         "mean_class_std": "" if c["mean_class"][1] is None else f"{c['mean_class'][1]:.4f}"})
    return rows


def write_csv(path, rows):
    with atomic_output(path, ".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def per_class_plots(root, cells, methods, labels, settings, checkpoint, head, stem="leaderboard"):
    """Per setting, the per-class accuracy of each method (mean over the seeds counted in its cell)."""
    from ..figures import plot_grouped_bars

    out = {}
    for s in settings:
        names, bars = None, {}
        for m in methods:
            cell = cells.get((m, s))
            if cell is None:
                continue
            names = names or cell["runs"][0][0]["results"]["class_names"]
            per_seed = [[report["per_class_acc"].get(n) for n in names] for _, report in cell["runs"]]
            bars[labels[m]] = np.nanmean(np.asarray(per_seed, dtype=float), axis=0).tolist()  # None: NaN
        if bars:
            path = os.path.join(root, f"{stem}_per_class_{s}.png")
            out[s] = plot_grouped_bars(bars, names, f"{s}: per-class test accuracy ({checkpoint}, head {head}), "
                                       f"mean over seeds", "accuracy (%)", path)
    return out


#: the key a Fig. 4 sweep varies (ReMoP's mixture weight, retrained per value)
BETA_KEY = "remop_beta"
BETA_PLOT = "beta.png"


def _run_configs(cells):
    """{setting: [(method, config.json)]} of the runs counted in ``cells``; None when one has no config.json or no
    ``remop_beta``."""
    by_setting = defaultdict(list)
    for (method, setting), cell in cells.items():
        for r, _ in cell["runs"]:
            config = r["config"]
            if config is None or BETA_KEY not in config:
                return None
            by_setting[setting].append((method, config))
    return by_setting


def _only_beta_differs(rows):
    """{method: beta} when the configs of ``rows`` agree on every identity key but the seed and beta, and each
    method has one beta, distinct from the others'; else None."""
    rest = {json.dumps({k: v for k, v in identity(c).items() if k not in ("seed", BETA_KEY)}, sort_keys=True)
            for _, c in rows}
    betas = {}
    for method, config in rows:
        if betas.setdefault(method, config[BETA_KEY]) != config[BETA_KEY]:
            return None  # one row trained with several betas
    return betas if len(rest) == 1 and len(set(betas.values())) == len(betas) else None


def beta_curves(runs, cells):
    """The data of ``beta.png``: {setting: [{beta, method, n, seeds, overall, mean_class}] by beta}, with
    ``overall`` / ``mean_class`` the cells' (mean, sample std) -- when in every setting the rows differ only in
    ``remop_beta`` (each run's config.json) and some setting has two betas or more; else None. The runs read are
    those counted in ``cells``; ``runs`` (all of them) is not needed beside those."""
    by_setting = _run_configs(cells)
    if not by_setting:
        return None
    curves = {}
    for setting, rows in by_setting.items():
        beta_of = _only_beta_differs(rows)
        if beta_of is None:
            return None
        points = ({"beta": beta, "method": m, **{k: v for k, v in cells[(m, setting)].items() if k != "runs"}}
                  for m, beta in beta_of.items())
        curves[setting] = sorted(points, key=lambda point: point["beta"])
    return curves if max(len(points) for points in curves.values()) > 1 else None


def plot_beta_curves(curves, title, path):
    """Fig. 4: overall and mean class accuracy against the trained beta, mean ± std over seeds, one line per
    setting; ``curves``: {setting: [{beta, overall: (mean, std), mean_class: (mean, std)}]} (std None: one seed)."""
    from ..figures import accuracy_panels

    def draw(ax, key):
        for setting, points in curves.items():
            means = [p[key][0] for p in points]
            stds = [p[key][1] or 0.0 for p in points]
            ax.errorbar([p["beta"] for p in points], means, yerr=stds, marker="o", capsize=3, label=setting)

    return accuracy_panels(("overall", "mean_class"), draw, "beta (trained)", title, path, height=3.4,
                           fontsize="medium")


def beta_plot(root, curves, settings, checkpoint, head, name=BETA_PLOT):
    """``DIR/beta.png`` (Fig. 4) of :func:`beta_curves`' data, one line per setting in column order."""
    title = f"accuracy vs trained beta ({checkpoint} checkpoint, head {head}), mean ± sample std over seeds"
    return plot_beta_curves({s: curves[s] for s in settings if s in curves}, title, os.path.join(root, name))


def build_parser():
    p = argparse.ArgumentParser(prog="remop-usb leaderboard", description="Mean ± std over seeds of a sweep's "
                                "runs, in the paper's layout (Markdown on stdout, DIR/leaderboard.md and .csv).")
    p.add_argument("dir", help="a sweep's output folder (<setting>/<method>/seed<k>/results.json)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best: selected on the test split, as in the paper (default); last: no selection")
    p.add_argument("--head", default="primary", help="primary (each run's own: ReMoP's mixture, ...) or a head "
                   "name such as linear or mixture")
    p.add_argument("--split", choices=SPLITS, default="auto", help="test: the run's test set (cross-dataset test, "
                   "or the test split when selecting on valid); eval: its eval split; auto (default): test when the "
                   "run has a test set, else eval")
    p.add_argument("--no_plots", action="store_true", help="do not write the per-class (and beta) PNGs")
    p.add_argument("--published", action="store_true", help="the README's layout instead of the paper's: per "
                   "setting, mean class (overall) accuracy, mean ± sample std, with n seeds, and the unlabeled path "
                   "(mask / pseudo-label accuracy %% per source over the final tenth of each run); a cell whose gap "
                   f"in mean class accuracy to its column's reference row is smaller than the larger of the two "
                   f"rows' sample stds is marked {WITHIN_SPREAD}, the reference {REFERENCE} (files "
                   "leaderboard_published.*)")
    p.add_argument("--reference", metavar="METHOD", help="with --published: the reference row of every column, a "
                   "method folder or its label (e.g. fixmatch or FixMatch); default: each column's best mean class "
                   "accuracy")
    return p


def file_suffix(checkpoint="best", head="primary", split="auto", published=False, reference=None) -> str:
    """'' for the default table; otherwise what differs from it (``_last``, ``_linear``, ``_last_linear_test``,
    ``_published``, ``_published_ref-fixmatch``), so tables of one sweep made with other options sit beside each
    other instead of replacing each other."""
    defaults = build_parser()
    suffix = "".join(f"_{value}" for key, value in (("checkpoint", checkpoint), ("head", head), ("split", split))
                     if value != defaults.get_default(key))
    return suffix + ("_published" if published else "") + (f"_ref-{reference}" if reference else "")


def reference_method(reference, methods, labels):
    """The method a ``--reference`` names (a method folder, else a label), or None for the default."""
    if reference is None:
        return None
    if reference in methods:
        return reference
    named = [m for m in methods if labels[m] == reference]
    if not named:
        raise UserError(f"leaderboard: --reference {reference}: no such row (methods: {', '.join(methods)})")
    return named[0]


def tables(a, cells, methods, labels, settings):
    """The Markdown printed and written: the paper's layout (and the unlabeled path's table), or the README's."""
    selection = ("best checkpoint (selected on the test split, as in the paper)" if a.checkpoint == "best"
                 else "last checkpoint (no selection)")
    if a.published:
        caption = (f"Mean class accuracy (overall accuracy), %, mean ± sample std (ddof=1) over n seeds; {selection}; "
                   f"head: {a.head}; split: {a.split}. Then mask / pseudo-label accuracy (%) per source over the "
                   f"final tenth of each run, mean over its seeds (pl: the unsupervised loss; remop: ReMoP's "
                   f"confident mixture rows; tras: TRAS's head; none: no unlabeled path).")
        return published_markdown(cells, methods, labels, settings, caption, a.reference)
    caption = (f"Overall / mean class accuracy (%), mean ± sample std (ddof=1) over n seeds; {selection}; "
               f"head: {a.head}; split: {a.split}. Best mean per column in bold.")
    table = markdown(cells, methods, labels, settings, caption)
    if any(c["unlabeled"] for c in cells.values()):
        table += "\n" + unlabeled_markdown(cells, methods, labels, settings)
    return table


def main(argv=None):
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.reference is not None and not a.published:
        parser.error("--reference marks the published layout: add --published")
    runs = find_runs(a.dir)
    check_splits(runs)
    check_rows(runs)
    cells, left_out = aggregate(runs, a.checkpoint, a.head, a.split)
    if not cells:
        raise UserError(f"leaderboard: no run under {a.dir} has a {a.checkpoint} checkpoint with head '{a.head}'")
    curves = None if a.no_plots else beta_curves(runs, cells)
    methods, labels, settings = order(a.dir, runs)
    methods = [m for m in methods if any((m, s) in cells for s in settings)]
    labels = row_labels(labels, runs)
    a.reference = reference_method(a.reference, methods, labels)
    suffix = file_suffix(a.checkpoint, a.head, a.split, a.published, a.reference)
    stem = f"leaderboard{suffix}"
    table = tables(a, cells, methods, labels, settings)
    if left_out:
        table += "\nLeft out: " + "; ".join(left_out) + "\n"
    print(table, end="")
    write_text_atomic(os.path.join(a.dir, f"{stem}.md"), table)
    write_csv(os.path.join(a.dir, f"{stem}.csv"), csv_rows(cells, methods, labels, settings, a.checkpoint, a.head))
    written = [f"{stem}.md", f"{stem}.csv"]
    if not a.no_plots:
        written += [os.path.basename(p) for p in per_class_plots(a.dir, cells, methods, labels, settings,
                                                                 a.checkpoint, a.head, stem).values()]
        if curves:
            name = suffix.join(os.path.splitext(BETA_PLOT))
            written.append(os.path.basename(beta_plot(a.dir, curves, settings, a.checkpoint, a.head, name)))
    print(f"\nwrote {', '.join(os.path.join(a.dir, w) for w in written)}")
    return 0
