"""The end-of-run figures: PNGs (matplotlib, Agg backend), each written atomically (temporary sibling, then rename).

At the end of a run (``plots: True``, default), :func:`write_run_plots` draws in its save dir:

- ``confusion_<best|last>.png``: the primary head's confusion matrix, row-normalised (sklearn's
  ConfusionMatrixDisplay; counts are in results.json);
- ``per_class_<best|last>.png``: per-class test accuracy of every head;
- ``pseudo_labels.png``: macro F1 of the linear / feature / mixture pseudo-labels and the mask rate over training
  (from diagnostics.jsonl; the paper's Fig. 1b);
- ``tsne.png``: 2-D t-SNE (sklearn) of the test features of the last checkpoint, by true class (Fig. 5), on at most
  ``plot_tsne_max`` images;
- ReMoP: ``beta_sweep.png`` / ``beta_sweep.json``: overall and mean class test accuracy of the mixture
  beta * p_l + (1 - beta) * p_s of the last checkpoint for beta = 0, 0.1, ..., 1 (beta = 1 is the linear
  classifier alone, 0 the feature classifier alone). This re-weights the trained model's two predictions at test
  time only; the paper's Fig. 4 retrains with each beta (``config/grids/fig4_beta.yaml`` does that).

``remop-usb plots RUN_DIR`` (:mod:`remop_usb.experiments.plots`) draws them again on a finished run; the
leaderboard's figures (:mod:`remop_usb.experiments.leaderboard`) are drawn with the single figures here.
"""

from __future__ import annotations

import os

import numpy as np

from .fileio import atomic_output, write_json_atomic

BETAS = tuple(round(0.1 * i, 1) for i in range(11))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Write ``fig`` as a PNG at ``path`` atomically and close it."""
    plt = _pyplot()
    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# -- single figures ---------------------------------------------------------------------------------------------

def plot_confusion(matrix, class_names, title, path):
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(class_names), 0.8 + 0.8 * len(class_names)))
    ConfusionMatrixDisplay(normalised, display_labels=class_names).plot(ax=ax, values_format=".2f", cmap="Blues",
                                                                        colorbar=False, xticks_rotation=45)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_grouped_bars(values_by_group, class_names, title, ylabel, path):
    """One bar per (class, group); ``values_by_group``: {group: [value per class, None for missing]}."""
    plt = _pyplot()
    groups = list(values_by_group)
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(class_names), 3.6))
    for i, g in enumerate(groups):
        vals = [np.nan if v is None else v for v in values_by_group[g]]
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, vals, width, label=g)
    ax.set_xticks(x, class_names, rotation=30)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_pseudo_labels(records, path):
    """Macro F1 (all pseudo-labels) and mask rate per prediction over iterations, from diagnostics records."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    its = [r["it"] for r in records]
    for head in records[-1]["pseudo_labels"]:
        a.plot(its, [r["pseudo_labels"][head]["macro_f1"] for r in records], marker="o", label=head)
        if "mask_rate_all" in records[-1]["pseudo_labels"][head]:
            b.plot(its, [r["pseudo_labels"][head]["mask_rate_all"] for r in records], marker="o", label=head)
    a.set(title="pseudo-label macro F1 (unlabeled set)", xlabel="iteration", ylabel="macro F1")
    b.set(title="mask rate (confidence >= threshold)", xlabel="iteration", ylabel="fraction")
    a.legend(fontsize="small")
    if b.lines:
        b.legend(fontsize="small")
    return save_figure(fig, path)


def tsne_embedding(feat, seed=0):
    """2-D t-SNE (sklearn) of N x d features; perplexity 30, or (N - 1) / 3 for small N."""
    from sklearn.manifold import TSNE

    feat = np.asarray(feat, dtype=np.float32)
    perplexity = float(min(30.0, max(2.0, (len(feat) - 1) / 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(feat)


def plot_tsne(feat, y, class_names, title, path, seed=0):
    plt = _pyplot()
    emb = tsne_embedding(feat, seed)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c, name in enumerate(class_names):
        sel = y == c
        if sel.any():
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize="small", markerscale=2)
    return save_figure(fig, path)


def accuracy_panels(keys, draw, xlabel, title, path, height, **title_kw):
    """Two panels against beta, overall accuracy left and mean class accuracy right: ``draw(ax, key)`` for each of
    ``keys`` (the two accuracies' keys in the data), then the axis labels and the legend."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, height), layout="constrained")
    for ax, key, label in zip(axes, keys, ("overall accuracy", "mean class accuracy")):
        draw(ax, key)
        ax.set(xlabel=xlabel, ylabel=f"{label} (%)")
        ax.legend(fontsize="small")
    fig.suptitle(title, **title_kw)
    return save_figure(fig, path)


def plot_beta_sweep(rows, beta_trained, path):
    def draw(ax, key):
        ax.plot([r["beta"] for r in rows], [r[key] for r in rows], marker="o")
        ax.axvline(beta_trained, color="grey", linestyle=":", label=f"trained with beta={beta_trained}")

    return accuracy_panels(("overall_acc", "mean_class_acc"), draw, "beta (weight of the linear prediction)",
                           "test accuracy of the mixture vs beta (test-time re-weighting)", path, height=3.2)


# -- the beta sweep ---------------------------------------------------------------------------------------------

def beta_sweep(logits, feat_pred, y_true, class_names, mix="prob", betas=BETAS):
    """Overall / mean class accuracy of ReMoP's mixture (Eq. 6, ``mix`` as the model's) for each beta."""
    import torch

    from .algorithms.feature_classifier import mix_predictions
    from .evaluation import classification_report

    rows = []
    for beta in betas:
        mixture = mix_predictions(torch.from_numpy(logits), torch.from_numpy(feat_pred), beta, mix)
        report = classification_report(y_true, mixture.argmax(dim=1).numpy(), class_names)
        rows.append({"beta": float(beta), "overall_acc": report["overall_acc"],
                     "mean_class_acc": report["mean_class_acc"]})
    return rows


# -- a finished run ---------------------------------------------------------------------------------------------

def _subsample(n, limit, seed):
    if not limit or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def results_plots(summary, save_path):
    """Figures drawn from results.json alone."""
    names, primary, out = summary["class_names"], summary["primary_head"], {}
    for which in ("best", "last"):
        entry = summary.get(which)
        if not entry:
            continue
        report = entry["heads"][primary]
        out[f"confusion_{which}"] = plot_confusion(
            report["confusion_matrix"], names, f"{which}@{entry['it']} {primary}: "
            f"{report['overall_acc']:.2f}/{report['mean_class_acc']:.2f}",
            os.path.join(save_path, f"confusion_{which}.png"))
        per_class = {h: [r["per_class_acc"][n] for n in names] for h, r in entry["heads"].items()}
        out[f"per_class_{which}"] = plot_grouped_bars(per_class, names, f"per-class test accuracy, {which} checkpoint",
                                                      "accuracy (%)", os.path.join(save_path, f"per_class_{which}.png"))
    return out


def model_plots(algorithm, save_path, names, checkpoint="latest_model.pth"):
    """t-SNE of the test features and, for ReMoP, the beta sweep, with ``checkpoint`` loaded."""
    from .evaluation import predict
    from .usb_compat import unwrap

    algorithm.load_model(os.path.join(save_path, checkpoint))
    net = unwrap(algorithm.ema_model)
    remop = hasattr(net, "centers")
    y, outputs = predict(algorithm, "eval", ["logits", "feat"] + (["feat_pred"] if remop else []))
    out = {}
    keep = _subsample(len(y), algorithm.args.plot_tsne_max, algorithm.args.seed)
    if len(keep) >= 5:
        out["tsne"] = plot_tsne(outputs["feat"][keep], y[keep], names, f"t-SNE of {len(keep)} test features "
                                f"({checkpoint})", os.path.join(save_path, "tsne.png"), algorithm.args.seed)
    if remop:
        rows = beta_sweep(outputs["logits"], outputs["feat_pred"], y, names, net.mix)
        write_json_atomic(os.path.join(save_path, "beta_sweep.json"),
                          {"checkpoint": checkpoint, "mix": net.mix, "trained_beta": net.beta, "rows": rows}, indent=2)
        out["beta_sweep"] = plot_beta_sweep(rows, net.beta, os.path.join(save_path, "beta_sweep.png"))
    return out


def write_run_plots(algorithm, save_path, summary, checkpoint="latest_model.pth"):
    """Every end-of-run figure; returns {name: path}."""
    from .diagnostics import DIAG_FILE, read_records

    out = results_plots(summary, save_path)
    records = read_records(os.path.join(save_path, DIAG_FILE))
    if records:
        out["pseudo_labels"] = plot_pseudo_labels(records, os.path.join(save_path, "pseudo_labels.png"))
    out.update(model_plots(algorithm, save_path, summary["class_names"], checkpoint))
    return out
