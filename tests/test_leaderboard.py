"""remop-usb leaderboard on crafted results.json files, against means and sample stds computed by hand."""

import csv
import json
import os

import pytest

from remop_usb.cli import main
from remop_usb.errors import UserError
from remop_usb.leaderboard import find_runs

NAMES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def _report(overall, mean_class):
    return {"overall_acc": overall, "mean_class_acc": mean_class,
            "per_class_acc": {n: mean_class for n in NAMES}, "confusion_matrix": [[0] * 7 for _ in range(7)],
            "num_samples": 0}


def write_run(root, setting, method, seed, best, last=None, split="a" * 64, n1=500, gamma=150, test=None,
              pseudo=None):
    """best/last: {head: (overall, mean class)}; the first head is the primary one; test: the same on a test set;
    pseudo: {source: (final mask, final accuracy)} as results.json's ``pseudo_labels``."""
    folder = os.path.join(root, setting, method, f"seed{seed}")
    os.makedirs(folder)
    results = {"algorithm": "fixmatch", "imb_algorithm": None, "dataset": "rafdb", "seed": seed, "num_labels": n1,
               "lb_imb_ratio": gamma, "split_sha256": split, "class_names": NAMES, "primary_head": next(iter(best)),
               "best": {"it": 10, "heads": {h: _report(*v) for h, v in best.items()}},
               "last": {"it": 20, "heads": {h: _report(*v) for h, v in (last or best).items()}}}
    if test:
        for which in ("best", "last"):
            results[which]["test_heads"] = {h: _report(*v) for h, v in test.items()}
    if pseudo:
        results["pseudo_labels"] = {s: {"final": {"steps": 10, "mask": m, "acc": a}, "run": None}
                                    for s, (m, a) in pseudo.items()}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f)


@pytest.fixture
def sweep_dir(tmp_path):
    """Setting A (3 seeds): FixMatch 80/82/84 | 60/61/65, ReMoP mixture 85/86/87 | 70x3, ReMoP linear 81/83/85.
    Setting B (1 seed): FixMatch 90/75 only."""
    a, b = A, B
    for seed, (fo, fm, ro, rl) in enumerate([(80, 60, 85, 81), (82, 61, 86, 83), (84, 65, 87, 85)]):
        split = f"{seed}" * 64
        write_run(tmp_path, a, "fixmatch", seed, {"linear": (fo, fm)}, last={"linear": (fo - 10, fm - 10)},
                  split=split)
        write_run(tmp_path, a, "remop_fixmatch", seed, {"mixture": (ro, 70.0), "linear": (rl, 69.0)}, split=split)
    write_run(tmp_path, b, "fixmatch", 0, {"linear": (90.0, 75.0)}, n1=2000, gamma=50)
    return tmp_path


def _table(text):
    """{(method, setting): cell} of the Markdown table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    settings = [c.strip() for c in lines[0].split("|")[2:-1]]
    return {(line.split("|")[1].strip(), s): c.strip()
            for line in lines[1:] for s, c in zip(settings, line.split("|")[2:-1])}


A, B = "rafdb-N500-g150", "rafdb-N2000-g50"


def test_mean_and_sample_std_over_seeds_best_in_bold(sweep_dir, capsys):
    assert main(["leaderboard", str(sweep_dir), "--no_plots"]) == 0
    out = capsys.readouterr().out
    cells = _table(out)
    # FixMatch: mean 82, std sqrt(((-2)^2 + 0 + 2^2) / 2) = 2; mean class 62, std sqrt((4 + 1 + 9) / 2) = 2.6458
    assert cells[("fixmatch", A)] == "82.00 ± 2.00 / 62.00 ± 2.65 (n=3)"
    # ReMoP (primary = mixture): 86 ± 1, 70 ± 0, both best in the column
    assert cells[("remop_fixmatch", A)] == "**86.00 ± 1.00** / **70.00 ± 0.00** (n=3)"
    assert cells[("fixmatch", B)] == "**90.00 ± -** / **75.00 ± -** (n=1)"  # one seed: no std; alone, so best
    assert cells[("remop_fixmatch", B)] == "-"
    assert "sample std (ddof=1)" in out and "best checkpoint (selected on the test split" in out
    with open(sweep_dir / "leaderboard.md") as f:
        assert _table(f.read()) == cells


def test_csv_has_the_numbers(sweep_dir):
    assert main(["leaderboard", str(sweep_dir), "--no_plots"]) == 0
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        rows = {(r["setting"], r["method"]): r for r in csv.DictReader(f)}
    r = rows[("rafdb-N500-g150", "fixmatch")]
    assert (r["n"], r["seeds"], r["checkpoint"], r["head"]) == ("3", "0 1 2", "best", "primary")
    assert float(r["overall_mean"]) == 82.0 and float(r["overall_std"]) == 2.0
    assert float(r["mean_class_std"]) == pytest.approx(7 ** 0.5, abs=1e-4)
    assert rows[("rafdb-N2000-g50", "fixmatch")]["overall_std"] == ""
    assert ("rafdb-N2000-g50", "remop_fixmatch") not in rows


def test_linear_head_and_last_checkpoint(sweep_dir, capsys):
    assert main(["leaderboard", str(sweep_dir), "--head", "linear", "--no_plots"]) == 0
    cells = _table(capsys.readouterr().out)
    assert cells[("remop_fixmatch", A)] == "**83.00 ± 2.00** / **69.00 ± 0.00** (n=3)"
    assert cells[("fixmatch", A)] == "82.00 ± 2.00 / 62.00 ± 2.65 (n=3)"
    assert main(["leaderboard", str(sweep_dir), "--checkpoint", "last", "--no_plots"]) == 0
    out = capsys.readouterr().out
    assert "last checkpoint (no selection)" in out
    assert _table(out)[("fixmatch", A)] == "72.00 ± 2.00 / 52.00 ± 2.65 (n=3)"
    # each table has its own files: the linear-head and last-checkpoint tables did not replace the default one
    assert not (sweep_dir / "leaderboard.md").exists()
    with open(sweep_dir / "leaderboard_last.md") as f:
        assert _table(f.read())[("fixmatch", A)] == "72.00 ± 2.00 / 52.00 ± 2.65 (n=3)"
    with open(sweep_dir / "leaderboard_linear.md") as f:
        assert _table(f.read())[("fixmatch", A)] == "82.00 ± 2.00 / 62.00 ± 2.65 (n=3)"
    assert (sweep_dir / "leaderboard_last.csv").exists() and (sweep_dir / "leaderboard_linear.csv").exists()


def test_file_suffix_names_what_differs_from_the_default_table():
    from remop_usb.leaderboard import file_suffix

    assert file_suffix() == "" and file_suffix("last") == "_last"
    assert file_suffix("last", "linear", "test") == "_last_linear_test" and file_suffix(split="eval") == "_eval"


def test_a_missing_head_is_listed_not_hidden(sweep_dir, capsys):
    assert main(["leaderboard", str(sweep_dir), "--head", "mixture", "--no_plots"]) == 0
    out = capsys.readouterr().out
    assert "fixmatch" not in {m for m, _ in _table(out)}
    assert "Left out: " in out and "rafdb-N500-g150/fixmatch/seed0: no head 'mixture'" in out


def test_refuses_to_compare_runs_on_different_splits(sweep_dir, capsys):
    path = sweep_dir / "rafdb-N500-g150" / "remop_fixmatch" / "seed1" / "results.json"
    res = json.loads(path.read_text())
    res["split_sha256"] = "f" * 64
    path.write_text(json.dumps(res))
    assert main(["leaderboard", str(sweep_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "setting rafdb-N500-g150, seed 1" in err[0]
    assert "fixmatch/seed1 111111111111" in err[0] and "remop_fixmatch/seed1 ffffffffffff" in err[0]
    assert not (sweep_dir / "leaderboard.md").exists()


def test_order_and_labels_from_the_sweep_plan(sweep_dir, capsys):
    plan = {"methods": [{"name": "remop_fixmatch", "label": "w/ ReMoP (Ours)"}, {"name": "fixmatch",
                                                                               "label": "FixMatch"}],
            "settings": ["rafdb-N2000-g50", "rafdb-N500-g150"], "seeds": [0, 1, 2]}
    (sweep_dir / "sweep.json").write_text(json.dumps(plan))
    assert main(["leaderboard", str(sweep_dir), "--no_plots"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Method | rafdb-N2000-g50 | rafdb-N500-g150 |"
    assert lines[2].startswith("| w/ ReMoP (Ours) | - |") and lines[3].startswith("| FixMatch | **90.00")


def test_per_class_plot_beside_the_leaderboard(sweep_dir):
    assert main(["leaderboard", str(sweep_dir)]) == 0
    png = sweep_dir / "leaderboard_per_class_rafdb-N500-g150.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(sweep_dir) if p.startswith(".tmp-")]


def test_bad_layout_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no results.json"):
        find_runs(str(tmp_path))
    os.makedirs(tmp_path / "x")
    (tmp_path / "x" / "results.json").write_text("{}")
    with pytest.raises(UserError, match="is not at <setting>/<method>/seed<k>/results.json"):
        find_runs(str(tmp_path))


def test_a_cross_dataset_test_set_is_what_is_reported(tmp_path, capsys):
    """Train RAF-DB, test CK+: results.json's test_heads; --split eval shows the RAF-DB test split instead."""
    for seed, (ck, raf) in enumerate([(60.0, 80.0), (64.0, 82.0)]):
        write_run(tmp_path, "rafdb2ckplus-N500-g150", "fixmatch", seed, {"linear": (raf, 50.0)},
                  test={"linear": (ck, 40.0 + seed)})
    assert main(["leaderboard", str(tmp_path), "--no_plots"]) == 0
    cells = _table(capsys.readouterr().out)
    assert cells[("fixmatch", "rafdb2ckplus-N500-g150")] == "**62.00 ± 2.83** / **40.50 ± 0.71** (n=2)"
    assert main(["leaderboard", str(tmp_path), "--no_plots", "--split", "eval"]) == 0
    cells = _table(capsys.readouterr().out)
    assert cells[("fixmatch", "rafdb2ckplus-N500-g150")] == "**81.00 ± 1.41** / **50.00 ± 0.00** (n=2)"


# -- unusable results.json ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,message", [
    (b'{"primary_head": "linear",',
     ":1: not valid JSON (Expecting property name enclosed in double quotes, column 27)"),
    (b"[1, 2]", ": expected a JSON object, got a list"),
    (b"\xff\xfe{}", ": cannot be read ("),
    (b'{"best": {}}', ": no 'primary_head' (expected the name of the run's primary head"),
])
def test_an_unusable_results_file_is_one_line_naming_it(sweep_dir, capsys, content, message):
    path = sweep_dir / A / "remop_fixmatch" / "seed1" / "results.json"
    path.write_bytes(content)
    assert main(["leaderboard", str(sweep_dir), "--no_plots"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: leaderboard: {path}{message}"), err
    assert "Traceback" not in captured.err and not (sweep_dir / "leaderboard.md").exists()


# -- Fig. 4: rows that differ only in remop_beta -----------------------------------------------------------------

S1, S2 = "rafdb_2000_150", "rafdb_500_150"


def write_config(root, setting, method, seed, beta, **keys):
    """The config.json of a ReMoP run trained with ``beta`` (keys as the launcher records them)."""
    config = {"algorithm": "fixmatch", "imb_algorithm": "remop", "lr": 0.0001, "seed": seed, "remop_beta": beta,
              "save_dir": os.path.join(str(root), setting, method), "save_name": f"seed{seed}", "wandb_tags": method,
              "num_workers": 4, **keys}
    with open(os.path.join(root, setting, method, f"seed{seed}", "config.json"), "w") as f:
        json.dump(config, f)


@pytest.fixture
def fig4_dir(tmp_path):
    """S1: beta 0.9 (seeds 0, 1), 0.1 and 0.5 (seeds 0-2); S2: beta 0.1 and 0.5, one seed each."""
    runs = {(S1, 0.9): [(76.0, 55.0), (78.0, 59.0)],
            (S1, 0.1): [(70.0, 50.0), (72.0, 52.0), (74.0, 57.0)],
            (S1, 0.5): [(80.0, 60.0), (81.0, 60.0), (82.0, 60.0)],
            (S2, 0.1): [(60.0, 40.0)], (S2, 0.5): [(66.0, 45.0)]}
    for (setting, beta), values in runs.items():
        method = f"remop_fixmatch-beta{beta}"
        n1 = 2000 if setting == S1 else 500
        for seed, pair in enumerate(values):
            write_run(tmp_path, setting, method, seed, {"mixture": pair}, n1=n1)
            write_config(tmp_path, setting, method, seed, beta, num_labels=n1)
    return tmp_path


def _curves(root, head="primary"):
    from remop_usb.leaderboard import aggregate, beta_curves

    runs = find_runs(str(root))
    return beta_curves(runs, aggregate(runs, "best", head)[0])


def test_beta_curves_are_the_means_and_sample_stds_over_seeds(fig4_dir):
    curves = _curves(fig4_dir)
    assert sorted(curves) == [S1, S2]
    s1 = curves[S1]
    assert [(p["beta"], p["method"], p["n"], p["seeds"]) for p in s1] == [
        (0.1, "remop_fixmatch-beta0.1", 3, [0, 1, 2]), (0.5, "remop_fixmatch-beta0.5", 3, [0, 1, 2]),
        (0.9, "remop_fixmatch-beta0.9", 2, [0, 1])]
    # beta 0.1: 70/72/74 -> 72 ± 2; 50/52/57 -> 53 ± sqrt((9 + 1 + 16) / 2) = sqrt(13)
    assert s1[0]["overall"] == (72.0, 2.0) and s1[0]["mean_class"] == (53.0, pytest.approx(13 ** 0.5))
    assert s1[1]["overall"] == (81.0, 1.0) and s1[1]["mean_class"] == (60.0, 0.0)
    # beta 0.9: 76/78 -> 77 ± sqrt(2); 55/59 -> 57 ± sqrt(8)
    assert s1[2]["overall"] == (77.0, pytest.approx(2 ** 0.5))
    assert s1[2]["mean_class"] == (57.0, pytest.approx(8 ** 0.5))
    assert [(p["beta"], p["overall"], p["mean_class"]) for p in curves[S2]] == [
        (0.1, (60.0, None), (40.0, None)), (0.5, (66.0, None), (45.0, None))]  # one seed: no std


def test_beta_png_beside_the_leaderboard(fig4_dir, capsys):
    from PIL import Image

    assert main(["leaderboard", str(fig4_dir)]) == 0
    assert "beta.png" in capsys.readouterr().out.splitlines()[-1]
    with Image.open(fig4_dir / "beta.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    (fig4_dir / "beta.png").unlink()
    assert main(["leaderboard", str(fig4_dir), "--no_plots"]) == 0
    assert not (fig4_dir / "beta.png").exists()


def test_no_beta_plot_when_rows_differ_in_more_than_beta(fig4_dir):
    write_config(fig4_dir, S1, "remop_fixmatch-beta0.5", 2, 0.5, num_labels=2000, lr=0.001)
    assert _curves(fig4_dir) is None
    assert main(["leaderboard", str(fig4_dir)]) == 0
    assert not (fig4_dir / "beta.png").exists()


def test_no_beta_plot_when_a_row_mixes_betas_or_two_rows_share_one(fig4_dir):
    write_config(fig4_dir, S1, "remop_fixmatch-beta0.5", 2, 0.7, num_labels=2000)
    assert _curves(fig4_dir) is None
    write_config(fig4_dir, S1, "remop_fixmatch-beta0.5", 2, 0.5, num_labels=2000)
    assert _curves(fig4_dir) is not None
    for seed in range(3):
        write_config(fig4_dir, S1, "remop_fixmatch-beta0.5", seed, 0.1, num_labels=2000)
    assert _curves(fig4_dir) is None


def test_no_beta_plot_without_config_files_or_for_one_row(sweep_dir, tmp_path_factory):
    assert main(["leaderboard", str(sweep_dir)]) == 0
    assert not (sweep_dir / "beta.png").exists()
    root = tmp_path_factory.mktemp("one_row")
    for seed in range(2):
        write_run(root, S1, "remop_fixmatch", seed, {"mixture": (80.0, 60.0)})
        write_config(root, S1, "remop_fixmatch", seed, 0.5)
    assert _curves(root) is None


def test_a_malformed_config_file_is_one_line_naming_it(fig4_dir, capsys):
    path = fig4_dir / S2 / "remop_fixmatch-beta0.1" / "seed0" / "config.json"
    path.write_text("{")
    assert main(["leaderboard", str(fig4_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: leaderboard: {path}:1: not valid JSON"), err
    assert not (fig4_dir / "leaderboard.md").exists()  # every input is read before anything is written


def test_unlabeled_path_table_is_the_mean_mask_and_pseudo_label_accuracy_over_seeds(tmp_path, capsys):
    """Two seeds of ReMoP: pl masks 0.5, 0.7 -> 0.60, accuracies 0.9, 1.0 -> 95.0%; remop masks 0.1, 0.3 -> 0.20 with
    one run passing nothing (accuracy None) -> 80.0% from the other alone. Vanilla has no unlabeled path: '-'."""
    write_run(tmp_path, A, "remop_fixmatch", 0, {"mixture": (80, 70)}, pseudo={"pl": (0.5, 0.9), "remop": (0.1, None)})
    write_run(tmp_path, A, "remop_fixmatch", 1, {"mixture": (82, 72)}, pseudo={"pl": (0.7, 1.0), "remop": (0.3, 0.8)})
    write_run(tmp_path, A, "supervised", 0, {"linear": (75, 65)})
    assert main(["leaderboard", str(tmp_path), "--no_plots"]) == 0
    out = capsys.readouterr().out
    unlabeled = _table(out[out.index("Unlabeled path"):])
    assert unlabeled[("remop_fixmatch", A)] == "pl 0.60 / 95.0; remop 0.20 / 80.0"
    assert unlabeled[("supervised", A)] == "-"
