"""``remop-usb leaderboard DIR [--checkpoint best|last] [--head primary|NAME] [--no_plots]``.

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
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from collections import defaultdict

import numpy as np

from .errors import UserError
from .fileio import atomic_output, read_json, write_text_atomic
from .results import SPLITS, head_name, reported_heads
from .runconfig import identity, read_config, setting_name

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
                     "results": results})
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


def unlabeled_markdown(cells, methods, labels, settings):
    """The unlabeled path of each cell: mean mask and mean pseudo-label accuracy (%) of each source, or '-'."""
    def text(figures):
        if not figures:
            return "-"
        acc = lambda a: "-" if a is None else f"{100 * a:.1f}"  # noqa: E731
        return "; ".join(f"{s} {m:.2f} / {acc(a)}" for s, (m, a) in figures.items())

    lines = ["Unlabeled path over the final tenth of each run, mean over its seeds: mask / pseudo-label accuracy (%) "
             "per source (pl: the unsupervised loss; remop: ReMoP's confident mixture rows).", "",
             "| Method | " + " | ".join(settings) + " |", "| --- |" + " --- |" * len(settings)]
    for m in methods:
        row = [text(cells[(m, s)]["unlabeled"]) if (m, s) in cells else "-" for s in settings]
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
    from .plots import plot_grouped_bars

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
            config = read_config(r["path"], "leaderboard")
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


def beta_plot(root, curves, settings, checkpoint, head, name=BETA_PLOT):
    """``DIR/beta.png`` (Fig. 4) of :func:`beta_curves`' data, one line per setting in column order."""
    from .plots import plot_beta_curves

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
    return p


def file_suffix(checkpoint="best", head="primary", split="auto") -> str:
    """'' for the default table; otherwise what differs from it (``_last``, ``_linear``, ``_last_linear_test``), so
    tables of one sweep made with other options sit beside each other instead of replacing each other."""
    defaults = build_parser()
    return "".join(f"_{value}" for key, value in (("checkpoint", checkpoint), ("head", head), ("split", split))
                   if value != defaults.get_default(key))


def main(argv=None):
    a = build_parser().parse_args(argv)
    suffix = file_suffix(a.checkpoint, a.head, a.split)
    stem = f"leaderboard{suffix}"
    runs = find_runs(a.dir)
    check_splits(runs)
    cells, left_out = aggregate(runs, a.checkpoint, a.head, a.split)
    if not cells:
        raise UserError(f"leaderboard: no run under {a.dir} has a {a.checkpoint} checkpoint with head '{a.head}'")
    curves = None if a.no_plots else beta_curves(runs, cells)  # reads config.json: before anything is written
    methods, labels, settings = order(a.dir, runs)
    methods = [m for m in methods if any((m, s) in cells for s in settings)]
    selection = ("best checkpoint (selected on the test split, as in the paper)" if a.checkpoint == "best"
                 else "last checkpoint (no selection)")
    caption = (f"Overall / mean class accuracy (%), mean ± sample std (ddof=1) over n seeds; {selection}; "
               f"head: {a.head}; split: {a.split}. Best mean per column in bold.")
    table = markdown(cells, methods, labels, settings, caption)
    if any(c["unlabeled"] for c in cells.values()):
        table += "\n" + unlabeled_markdown(cells, methods, labels, settings)
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
