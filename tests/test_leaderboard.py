"""remop-usb leaderboard on crafted results.json files, against means and sample stds computed by hand."""

import csv
import json
import os

import pytest

from remop_usb.cli import main
from remop_usb.errors import UserError
from remop_usb.experiments.leaderboard import find_runs

NAMES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def _report(overall, mean_class):
    return {"overall_acc": overall, "mean_class_acc": mean_class,
            "per_class_acc": {n: mean_class for n in NAMES}, "confusion_matrix": [[0] * 7 for _ in range(7)],
            "num_samples": 0}


def write_run(root, setting, method, seed, best, last=None, split="a" * 64, n1=500, gamma=150, test=None,
              pseudo=None, **keys):
    """best/last: {head: (overall, mean class)}; the first head is the primary one; test: the same on a test set;
    pseudo: {source: (final mask, final accuracy)} as results.json's ``pseudo_labels``; keys: other results.json
    keys (``algorithm``, ``ulb_loss_ratio``)."""
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
    results.update(keys)
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
    from remop_usb.experiments.leaderboard import file_suffix

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
    from remop_usb.experiments.leaderboard import aggregate, beta_curves

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
    for seed in range(3):  # every seed of the row: one seed alone would be a row mixing configurations
        write_config(fig4_dir, S1, "remop_fixmatch-beta0.5", seed, 0.5, num_labels=2000, lr=0.001)
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


# -- the published layout (--published): the README's tables ---------------------------------------------------

CON, REV = "consistent", "reversed"


@pytest.fixture
def published_dir(tmp_path):
    """consistent, two seeds each (mean class, overall; pl / remop: final mask, accuracy):
    Vanilla 80, 84 | 90, 90 -> 82.00 ± 2.83 (90.00 ± 0.00), no unlabeled path;
    FixMatch 90, 93 | 93, 95 -> 91.50 ± 2.12 (94.00 ± 1.41); pl 0.5/0.9, 0.7/1.0 -> 0.60 / 95.0;
    FixMatch with ulb_loss_ratio 0 (folder fixmatch_w0, labeled FixMatch by the plan too) 86, 87 | 91, 92 ->
    86.50 ± 0.71 (91.50 ± 0.71); pl 0.6/0.9 twice -> 0.60 / 90.0;
    FixMatch w/ ReMoP 92, 93 | 94, 94 -> 92.50 ± 0.71 (94.00 ± 0.00); pl 0.5/1.0 twice -> 0.50 / 100.0,
    remop 0.4/1.0 and 0.2/none passed -> 0.30 / 100.0.
    reversed: Vanilla alone, one seed, 85 | 91."""
    rows = {"supervised": ([(90, 80), (90, 84)], [None, None], {"algorithm": "supervised"}),
            "fixmatch": ([(93, 90), (95, 93)], [{"pl": (0.5, 0.9)}, {"pl": (0.7, 1.0)}], {}),
            "fixmatch_w0": ([(91, 86), (92, 87)], [{"pl": (0.6, 0.9)}] * 2, {"ulb_loss_ratio": 0.0}),
            "remop_fixmatch": ([(94, 92), (94, 93)], [{"pl": (0.5, 1.0), "remop": (0.4, 1.0)},
                                                      {"pl": (0.5, 1.0), "remop": (0.2, None)}], {})}
    for method, (accs, pseudo, keys) in rows.items():
        head = "mixture" if method.startswith("remop") else "linear"
        for seed, (pair, figures) in enumerate(zip(accs, pseudo)):
            write_run(tmp_path, CON, method, seed, {head: pair}, split=f"{seed}" * 64, pseudo=figures,
                      **{"ulb_loss_ratio": 1.0, **keys})
    write_run(tmp_path, REV, "supervised", 0, {"linear": (91, 85)}, split="r" * 64, algorithm="supervised")
    plan = {"methods": [{"name": "supervised", "label": "Vanilla"}, {"name": "fixmatch", "label": "FixMatch"},
                        {"name": "fixmatch_w0", "label": "FixMatch"},
                        {"name": "remop_fixmatch", "label": "FixMatch w/ ReMoP"}], "settings": [CON, REV]}
    (tmp_path / "sweep.json").write_text(json.dumps(plan))
    return tmp_path


PUBLISHED_CAPTION = (
    "Mean class accuracy (overall accuracy), %, mean ± sample std (ddof=1) over n seeds; best checkpoint (selected "
    "on the test split, as in the paper); head: primary; split: auto. Then mask / pseudo-label accuracy (%) per "
    "source over the final tenth of each run, mean over its seeds (pl: the unsupervised loss; remop: ReMoP's "
    "confident mixture rows; tras: TRAS's head; none: no unlabeled path).")
HEADER = ["| Method | consistent: mean class (overall) | consistent: mask / pl acc | reversed: mean class (overall) "
          "| reversed: mask / pl acc |", "| --- | --- | --- | --- | --- |"]


def _legend(reference):
    return (f"≈: the gap in mean class accuracy to the column's reference (ref) -- {reference} -- is smaller than "
            f"the larger of the two rows' sample stds (a one-seed row has none), i.e. within the seeds' spread.")


def test_published_table_marks_gaps_within_the_seeds_spread_of_the_best_row(published_dir, capsys):
    """Reference per column: the best mean class accuracy (consistent: ReMoP's 92.50 ± 0.71; reversed: Vanilla, the
    only row). FixMatch's gap 1.00 < max(2.12, 0.71): ≈ (its own std decides). Clear gaps, no mark: ulb weight 0
    6.00 > 0.71; Vanilla 10.50 > 2.83."""
    assert main(["leaderboard", str(published_dir), "--published", "--no_plots"]) == 0
    out = capsys.readouterr().out
    table = out[:out.index("\nwrote ")]
    assert table == "\n".join([
        PUBLISHED_CAPTION, "", *HEADER,
        "| Vanilla | 82.00 ± 2.83 (90.00 ± 0.00) n=2 | none | 85.00 ± - (91.00 ± -) n=1 (ref) | none |",
        "| FixMatch | 91.50 ± 2.12 (94.00 ± 1.41) n=2 ≈ | pl 0.60 / 95.0 | - | - |",
        "| FixMatch (ulb weight 0) | 86.50 ± 0.71 (91.50 ± 0.71) n=2 | pl 0.60 / 90.0 | - | - |",
        "| FixMatch w/ ReMoP | 92.50 ± 0.71 (94.00 ± 0.00) n=2 (ref) | pl 0.50 / 100.0; remop 0.30 / 100.0 | - | - |",
        "", _legend("the row with the best mean class accuracy"), ""])
    assert (published_dir / "leaderboard_published.md").read_text() == table
    assert not (published_dir / "leaderboard.md").exists()  # the paper's table is not replaced


def test_published_table_against_a_named_reference(published_dir, capsys):
    """--reference FixMatch (91.50 ± 2.12): ReMoP's gap 1.00 < max(0.71, 2.12): ≈ (the reference's std decides);
    ulb weight 0's gap 5.00 > 2.12 and Vanilla's 9.50 > 2.83 stay unmarked. Reversed has no FixMatch: no marks."""
    assert main(["leaderboard", str(published_dir), "--published", "--reference", "fixmatch", "--no_plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[4:8] == [
        "| Vanilla | 82.00 ± 2.83 (90.00 ± 0.00) n=2 | none | 85.00 ± - (91.00 ± -) n=1 | none |",
        "| FixMatch | 91.50 ± 2.12 (94.00 ± 1.41) n=2 (ref) | pl 0.60 / 95.0 | - | - |",
        "| FixMatch (ulb weight 0) | 86.50 ± 0.71 (91.50 ± 0.71) n=2 | pl 0.60 / 90.0 | - | - |",
        "| FixMatch w/ ReMoP | 92.50 ± 0.71 (94.00 ± 0.00) n=2 ≈ | pl 0.50 / 100.0; remop 0.30 / 100.0 | - | - |"]
    assert lines[9] == _legend("FixMatch")
    assert (published_dir / "leaderboard_published_ref-fixmatch.md").exists()
    # a label names the same row; the file is named by its folder
    assert main(["leaderboard", str(published_dir), "--published", "--reference", "FixMatch (ulb weight 0)",
                 "--no_plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[6].endswith("n=2 (ref) | pl 0.60 / 90.0 | - | - |") and lines[9] == _legend("FixMatch (ulb weight 0)")
    assert (published_dir / "leaderboard_published_ref-fixmatch_w0.md").exists()


def test_reference_must_name_a_row_and_needs_the_published_layout(published_dir, capsys):
    assert main(["leaderboard", str(published_dir), "--published", "--reference", "nope", "--no_plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: leaderboard: --reference nope: no such row (methods: supervised, fixmatch, fixmatch_w0, "
                   "remop_fixmatch)"]
    with pytest.raises(SystemExit) as info:
        main(["leaderboard", str(published_dir), "--reference", "fixmatch"])
    assert info.value.code == 2 and "add --published" in capsys.readouterr().err


@pytest.mark.parametrize("row,ref,marked", [
    (((91.5, 2.12),), ((92.5, 0.71),), True),   # gap 1.00 < 2.12, the row's std
    (((92.5, 0.71),), ((91.5, 2.12),), True),   # the reference's std
    (((91.09, 1.41),), ((92.5, 0.71),), False),  # gap 1.41 = the larger std: not smaller
    (((91.1, 1.41),), ((92.5, 0.71),), True),   # gap 1.40
    (((92.0, None),), ((92.5, 0.71),), True),   # a one-seed row: the reference's std alone
    (((92.0, None),), ((92.5, None),), False),  # no std on either side: no spread to compare with
])
def test_within_spread_is_a_gap_smaller_than_the_larger_std(row, ref, marked):
    from remop_usb.experiments.leaderboard import within_spread

    assert within_spread({"mean_class": row[0]}, {"mean_class": ref[0]}) is marked


def test_rows_of_one_label_are_told_apart_by_their_folder(published_dir, capsys):
    """fixmatch_w0 retrained with ulb_loss_ratio 1: its plan label FixMatch is FixMatch's, so both name their
    folder."""
    for seed in range(2):
        path = published_dir / CON / "fixmatch_w0" / f"seed{seed}" / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "ulb_loss_ratio": 1.0}))
    assert main(["leaderboard", str(published_dir), "--no_plots"]) == 0
    out = capsys.readouterr().out
    assert {m for m, _ in _table(out[:out.index("Unlabeled path")])} - {"---"} == {
        "Vanilla", "FixMatch [fixmatch]", "FixMatch [fixmatch_w0]", "FixMatch w/ ReMoP"}


def test_a_row_whose_seeds_differ_in_configuration_is_refused(published_dir, capsys):
    """Seed 1 of FixMatch trained with ulb_loss_ratio 0 (its config.json): not averaged with seed 0's weight 1."""
    for seed, weight in enumerate((1.0, 0.0)):
        config = {"algorithm": "fixmatch", "imb_algorithm": None, "seed": seed, "ulb_loss_ratio": weight,
                  "save_name": f"seed{seed}"}
        (published_dir / CON / "fixmatch" / f"seed{seed}" / "config.json").write_text(json.dumps(config))
    assert main(["leaderboard", str(published_dir), "--published", "--no_plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: leaderboard: consistent/fixmatch: its seeds were trained with different configurations "
                   "(seed0 -> seed1: ulb_loss_ratio: 1.0 -> 0.0), refusing to average them into one row; give each "
                   "configuration its own method folder (a grid cell)"]
    assert not (published_dir / "leaderboard_published.md").exists()
