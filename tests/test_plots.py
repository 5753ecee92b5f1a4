"""Figures: the beta sweep by hand, t-SNE keeps separated classes apart, PNGs written whole, a run's plots."""

import json
import os

import numpy as np
import pytest

from conftest import train_argv
from remop_usb.launch import main
from remop_usb.figures import beta_sweep, plot_pseudo_labels, results_plots, save_figure, tsne_embedding

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


def test_beta_sweep_by_hand():
    # image A (class 0): linear softmax [0.2, 0.8], feature [0.9, 0.1] -> class 0 wins iff beta < 4/7
    # image B (class 1): linear softmax [0.3, 0.7], feature [0.6, 0.4] -> class 1 wins iff beta > 1/3
    logits = np.array([[0.0, np.log(4.0)], [0.0, np.log(7 / 3)]], dtype=np.float32)
    feat_pred = np.array([[0.9, 0.1], [0.6, 0.4]], dtype=np.float32)
    rows = beta_sweep(logits, feat_pred, np.array([0, 1]), ["a", "b"], "prob")
    assert [r["beta"] for r in rows] == pytest.approx([i / 10 for i in range(11)])
    expected = [50.0] * 4 + [100.0] * 2 + [50.0] * 5  # beta 0-0.3: A only; 0.4, 0.5: both; 0.6-1: B only
    assert [r["overall_acc"] for r in rows] == pytest.approx(expected)
    assert [r["mean_class_acc"] for r in rows] == pytest.approx(expected)


def test_tsne_keeps_separated_classes_apart():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 32)) * 20
    y = np.repeat(np.arange(3), 20)
    emb = tsne_embedding(centers[y] + rng.normal(size=(60, 32)), seed=0)
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    assert (y[dist.argmin(axis=1)] == y).all()  # every point's nearest neighbour is of its class


def _report(k, names):
    return {"overall_acc": 50.0, "mean_class_acc": 40.0, "per_class_acc": {n: 10.0 * i for i, n in enumerate(names)},
            "confusion_matrix": np.eye(k, dtype=int).tolist()}


def test_figures_from_results_and_diagnostics(tmp_path):
    names = ["a", "b", "c"]
    summary = {"class_names": names, "primary_head": "mixture",
               "best": {"it": 5, "heads": {"mixture": _report(3, names), "linear": _report(3, names)}},
               "last": {"it": 9, "heads": {"mixture": _report(3, names), "linear": _report(3, names)}}}
    out = results_plots(summary, str(tmp_path))
    assert set(out) == {"confusion_best", "confusion_last", "per_class_best", "per_class_last"}
    assert all(_is_png(p) for p in out.values())
    records = [{"it": it, "pseudo_labels": {"linear": {"macro_f1": 0.1 * it, "mask_rate_all": 0.5},
                                            "feature": {"macro_f1": 0.2}}} for it in (2, 4)]
    assert _is_png(plot_pseudo_labels(records, str(tmp_path / "pl.png")))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_a_failed_write_leaves_no_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()

    def broken_savefig(path, **kwargs):
        with open(path, "wb") as f:
            f.write(PNG[:4])  # half a file, then the disk "fills up"
        raise OSError("No space left on device")

    fig.savefig = broken_savefig
    with pytest.raises(OSError):
        save_figure(fig, str(tmp_path / "x.png"))
    assert os.listdir(tmp_path) == []


def test_a_remop_run_writes_its_plots_and_a_consistent_beta_sweep(tiny_rafdb, tmp_path):
    assert main(train_argv(tiny_rafdb, tmp_path, save_name="p", num_train_iter=4, num_eval_iter=2,
                           diag_max_samples=40, plot_tsne_max=60, diagnostics=True, plots=True)) == 0
    run = tmp_path / "p"
    for name in ("confusion_best", "confusion_last", "per_class_best", "per_class_last", "pseudo_labels", "tsne",
                 "beta_sweep"):
        assert _is_png(run / f"{name}.png"), name
    sweep = json.loads((run / "beta_sweep.json").read_text())
    results = json.loads((run / "results.json").read_text())
    rows = {r["beta"]: r for r in sweep["rows"]}
    assert sweep["checkpoint"] == "latest_model.pth" and sweep["trained_beta"] == 0.5
    # at the trained beta the sweep is the model's own mixture; at beta = 1 the linear classifier alone
    last = results["last"]["heads"]
    assert rows[0.5]["overall_acc"] == pytest.approx(last["mixture"]["overall_acc"])
    assert rows[0.5]["mean_class_acc"] == pytest.approx(last["mixture"]["mean_class_acc"])
    assert rows[1.0]["overall_acc"] == pytest.approx(last["linear"]["overall_acc"])

    # the same figures again on the finished run, with the best checkpoint (remop-usb plots)
    from remop_usb.experiments.plots import main as plots_main

    for name in ("tsne.png", "beta_sweep.png", "beta_sweep.json"):
        os.remove(run / name)
    assert plots_main([str(run), "--checkpoint", "best"]) == 0
    assert _is_png(run / "tsne.png") and _is_png(run / "beta_sweep.png")
    sweep = json.loads((run / "beta_sweep.json").read_text())
    rows = {r["beta"]: r for r in sweep["rows"]}
    assert sweep["checkpoint"] == "model_best.pth"
    assert rows[0.5]["overall_acc"] == pytest.approx(results["best"]["heads"]["mixture"]["overall_acc"])
    assert rows[1.0]["overall_acc"] == pytest.approx(results["best"]["heads"]["linear"]["overall_acc"])
    assert json.loads((run / "results.json").read_text()) == results  # the finished run's results are untouched
