"""Numeric keys out of their range are refused in one line naming the key, where it was set, the value and the range
(remop_usb.ranges); a preset conflict reaches the run's log.txt and config.json."""

import json
import os

import pytest

from conftest import config_error, one_line_error, train_argv
from remop_usb import registry, runconfig
from remop_usb.config import build_parser, parse_args, range_table
from remop_usb.ranges import KEY_RANGES, NO_RANGE, parse, violations

BASE = "algorithm: {}\nimb_algorithm: {}\ndataset: rafdb\nnum_classes: 7\nnet: resnet18_fer\n"  # 5 lines

#: (algorithm, imb_algorithm, key, boundary values accepted, values just outside, the range as messages write it)
CASES = [
    ("fixmatch", "remop", "remop_beta", (0.0, 1.0), (-0.01, 1.01, 1.5), "0 <= remop_beta <= 1"),
    ("fixmatch", "remop", "remop_p_cutoff", (0.0, 1.0), (-0.01, 1.01), "0 <= remop_p_cutoff <= 1"),
    ("fixmatch", "remop", "remop_lambda_center", (0.0,), (-1e-06,), "remop_lambda_center >= 0"),
    ("fixmatch", "remop", "remop_lambda_reg", (0.0,), (-1e-06,), "remop_lambda_reg >= 0"),
    ("fixmatch", "remop", "remop_center_alpha", (1e-06, 1.0), (0.0, 1.01), "0 < remop_center_alpha <= 1"),
    ("fixmatch", "remop", "remop_center_grad_scale", (1e-06,), (0.0, -1.0), "remop_center_grad_scale > 0"),
    ("fixmatch", "None", "p_cutoff", (0.0, 1.0), (-0.01, 1.01), "0 <= p_cutoff <= 1"),
    ("fixmatch", "None", "T", (1e-06,), (0.0,), "T > 0"),
    ("fixmatch", "None", "ulb_loss_ratio", (0.0,), (-0.01,), "ulb_loss_ratio >= 0"),
    ("fixmatch", "None", "ema_m", (0.0, 0.9999), (1.0, -0.01), "0 <= ema_m < 1"),
    ("fixmatch", "None", "lr", (1e-06,), (0.0,), "lr > 0"),
    ("fixmatch", "None", "weight_decay", (0.0,), (-1e-06,), "weight_decay >= 0"),
    ("fixmatch", "None", "momentum", (0.0, 0.999), (1.0,), "0 <= momentum < 1"),
    ("fixmatch", "None", "uratio", (1,), (0,), "uratio >= 1"),
    ("fixmatch", "None", "batch_size", (1,), (0,), "batch_size >= 1"),
    ("fixmatch", "None", "eval_batch_size", (1,), (0,), "eval_batch_size >= 1"),
    ("fixmatch", "None", "crop_ratio", (1e-06, 1.0), (0.0, 1.01), "0 < crop_ratio <= 1"),
    ("fixmatch", "None", "crop_prob", (0.0, 1.0), (1.01,), "0 <= crop_prob <= 1"),
    ("fixmatch", "None", "ema_weight_decay", (0.0,), (-0.01,), "ema_weight_decay >= 0"),
    ("fixmatch", "None", "lb_imb_ratio", (1,), (0,), "lb_imb_ratio >= 1"),
    ("fixmatch", "None", "ulb_imb_ratio", (1, -1), (0,),
     "ulb_imb_ratio >= 1 or ulb_imb_ratio <= -1 (negative: the same ratio, classes in reversed order)"),
    ("fixmatch", "None", "num_labels", (1, -1), (0, -2),
     "num_labels >= 1 or num_labels == -1 (-1: every training image labeled)"),
    ("fixmatch", "None", "diag_every", (0,), (-1,), "diag_every >= 0 (0: num_eval_iter)"),
    ("fixmatch", "None", "seed", (0, 4294967295), (-1, 4294967296), "0 <= seed <= 4294967295"),
    ("acr", "None", "acr_ema_u", (0.0, 0.99), (1.0,), "0 <= acr_ema_u < 1"),
    ("acr", "None", "acr_est_epoch", (-1,), (-2,), "acr_est_epoch >= -1 (-1: from the first epoch)"),
    ("simpro", "None", "simpro_tau", (0.0,), (-0.01,), "simpro_tau >= 0"),
    ("adacm", "None", "adacm_temperature", (1e-06,), (0.0,), "adacm_temperature > 0"),
    ("fixmatch", "inpl", "inpl_qhat_momentum", (0.0,), (1.0,), "0 <= inpl_qhat_momentum < 1"),
    ("fixmatch", "adsh", "adsh_tau_1", (1.0,), (0.0, 1.01), "0 < adsh_tau_1 <= 1"),
    ("fixmatch", "cpe", "cpe_cut1", (1,), (0,), "cpe_cut1 >= 1"),
    ("fixmatch", "daso", "daso_T_proto", (1e-06,), (0.0,), "daso_T_proto > 0"),
    ("fixmatch", "debiaspl", "debiaspl_ema_p", (0.0,), (1.0,), "0 <= debiaspl_ema_p < 1"),
    ("fixmatch", "abc", "abc_p_cutoff", (1.0,), (1.01,), "0 <= abc_p_cutoff <= 1"),
    ("fixmatch", "tras", "tras_B", (1,), (0,), "tras_B > 0"),
    ("metaexpert", "None", "metaexpert_cb_beta", (0.0, 0.99), (1.0, -0.01), "0 <= metaexpert_cb_beta < 1"),
    ("cpg", "None", "cpg_vote_agreement", (0.0, 1.0), (1.01,), "0 <= cpg_vote_agreement <= 1"),
    ("cpg", "None", "cpg_label_smoothing", (0.0,), (1.0,), "0 <= cpg_label_smoothing < 1"),
]
IDS = [f"{case[2]}" for case in CASES]


def _config(tmp_path, algorithm, imb, extra=""):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(algorithm, imb) + extra)
    return str(path)


@pytest.mark.parametrize("algorithm,imb,key,accepted,refused,expected", CASES, ids=IDS)
def test_the_boundary_values_are_accepted(tmp_path, algorithm, imb, key, accepted, refused, expected):
    cfg = _config(tmp_path, algorithm, imb)
    for value in accepted:
        assert getattr(parse_args(["--c", cfg, f"--{key}", str(value)]), key) == value


@pytest.mark.parametrize("algorithm,imb,key,accepted,refused,expected", CASES, ids=IDS)
def test_just_outside_is_refused_naming_file_line_value_and_range(tmp_path, algorithm, imb, key, accepted, refused,
                                                                  expected):
    for value in refused:
        path, msg = config_error(tmp_path, BASE.format(algorithm, imb) + f"{key}: {value}\n")
        assert msg == f"{path}:6: {key} {value} is out of range: expected {expected}"


def test_a_flag_out_of_range_names_the_command_line(tmp_path):
    cfg = _config(tmp_path, "fixmatch", "remop", "remop_beta: 0.5\n")
    assert one_line_error(parse_args, ["--c", cfg, "--remop_beta", "1.5"]) == \
        "command line: --remop_beta 1.5 is out of range: expected 0 <= remop_beta <= 1"
    assert parse_args(["--c", cfg, "--remop_beta", "1"]).remop_beta == 1.0


def test_a_bad_yaml_value_is_refused_even_when_a_flag_would_be_fine(tmp_path):
    """The YAML's line is named: the flag of another key does not hide it."""
    path, msg = config_error(tmp_path, BASE.format("fixmatch", "remop") + "lr: 0.1\nremop_beta: 2\n")
    assert msg == f"{path}:7: remop_beta 2.0 is out of range: expected 0 <= remop_beta <= 1"


def test_train_py_prints_the_one_line(tmp_path, capsys):
    from remop_usb.launch import main

    assert main(["--c", _config(tmp_path, "fixmatch", "remop"), "--remop_beta", "-0.5"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("error: command line: --remop_beta -0.5 is out of range: expected 0 <= remop_beta <= 1"
                            "\n")
    assert "Traceback" not in captured.out


# -- the tables ---------------------------------------------------------------------------------------------------

def _runs():
    """(algorithm, imb_algorithm) for every registered algorithm alone and every imbalanced one this plugin runs."""
    from remop_usb.usb_compat.imb_algorithms import BASES, REFUSED

    registry.load([])
    runs = [(alg, None) for alg in registry.algorithms()]
    return runs + [(BASES.get(imb, ("fixmatch",))[0], imb) for imb in registry.imb_algorithms() if imb not in REFUSED]


def test_every_numeric_key_has_a_range_or_a_reason():
    for algorithm, imb in _runs():
        table = range_table(algorithm, imb)
        for action in build_parser(algorithm, imb)._actions:
            if action.type in (int, float):
                assert action.dest in table or action.dest in NO_RANGE, (algorithm, imb, action.dest)


def test_every_default_and_every_preset_value_is_in_range():
    from remop_usb.config import preset_classes

    for algorithm, imb in _runs():
        table = range_table(algorithm, imb)
        defaults = {a.dest: a.default for a in build_parser(algorithm, imb)._actions}
        assert list(violations(defaults, table)) == [], (algorithm, imb)
        for cls in preset_classes(algorithm, imb):
            for preset in cls.PRESETS.values():
                assert list(violations(preset, table)) == [], (cls, preset)
        assert not set(table) & set(NO_RANGE)


def test_the_range_strings():
    shown = {"[0, 1]": "0 <= x <= 1", "(0, 1]": "0 < x <= 1", "[0, 1)": "0 <= x < 1", "(-1, 1e-3)": "-1 < x < 1e-3",
             ">= 0": "x >= 0", "> 0": "x > 0", "<= -1": "x <= -1", "< 2.5": "x < 2.5", "== -1": "x == -1",
             ">= 1 or == -1; -1: all": "x >= 1 or x == -1 (-1: all)"}
    assert {spec: parse(spec).text("x") for spec in shown} == shown
    assert [v in parse("(0, 1]") for v in (0, 1e-12, 1, 1.0000001)] == [False, True, True, False]
    assert [v in parse(">= 1 or <= -1") for v in (-1, -0.5, 0, 0.99, 1, 7)] == [True, False, False, False, True, True]
    assert [v in parse("== -1") for v in (-1, -1.0, 0)] == [True, True, False]
    for table in [KEY_RANGES] + [getattr(registry.algorithm_class(a) if not i else registry.imb_algorithm_class(i),
                                         "RANGES", {}) for a, i in _runs()]:
        for spec in table.values():
            parse(spec)  # a malformed string is a ValueError
    with pytest.raises(ValueError, match="not a range: '0..1'"):
        parse("0..1")


def test_values_that_are_not_numbers_are_not_checked():
    table = {"a": "[0, 1]", "b": "> 0", "c": "> 0"}
    assert list(violations({"a": None, "b": "auto", "c": True}, table)) == []
    assert [(k, v) for k, v, _ in violations({"a": 2, "b": 0, "c": 1}, table)] == [("a", 2), ("b", 0)]


# -- a preset conflict in the run's log.txt and config.json --------------------------------------------------------

def test_a_preset_conflict_is_in_the_runs_log_and_config_json(tiny_rafdb, tmp_path, capsys):
    from remop_usb.launch import main

    argv = train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=2, num_eval_iter=2, remop_preset="official",
                      remop_mix="prob")
    expected = ["[remop-usb] remop_preset official sets remop_mix='logit'; command line sets --remop_mix prob, "
                "which wins",
                "[remop-usb] remop_preset official sets num_iter_per_epoch=800; command line sets --num_train_iter 2 "
                "(epoch 1: 2 per epoch), which wins"]
    assert main(argv) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if "remop_preset" in line] == expected
    with open(os.path.join(tmp_path, "run", "config.json")) as f:
        config = json.load(f)
    assert config["preset_conflicts"] == expected
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()  # "[<time> INFO] <message>"
    named = [line for line in log if " INFO] [remop-usb] remop_preset " in line]
    assert [line.split(" INFO] ", 1)[1] for line in named] == expected
    # a run made before the key existed is the same experiment (sweep), and so is the same config elsewhere
    older = {k: v for k, v in config.items() if k != "preset_conflicts"}
    assert runconfig.differences(config, older) == []
    assert runconfig.differences(config, dict(config, preset_conflicts=["elsewhere.yaml:3 ..."])) == []
    # rebuilt from its config.json (remop-usb plots), and resumed: the resumed run's lines follow in the same log
    from remop_usb.launch import algorithm_from_run_dir

    assert algorithm_from_run_dir(str(tmp_path / "run")).args.preset_conflicts == expected
    assert main(argv + ["--num_train_iter", "4", "--epoch", "2", "--resume", "True"]) == 0  # the last flag wins
    resumed = [expected[0], expected[1].replace("--num_train_iter 2 (epoch 1: 2", "--num_train_iter 4 (epoch 2: 2")]
    with open(os.path.join(tmp_path, "run", "config.json")) as f:
        assert json.load(f)["preset_conflicts"] == resumed
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert [line.split(" INFO] ", 1)[1] for line in log if " INFO] [remop-usb] remop_preset " in line] == \
        expected + resumed


def test_without_a_conflict_the_list_is_empty(tmp_path, capsys):
    args = parse_args(["--c", _config(tmp_path, "fixmatch", "remop"), "--remop_preset", "official"])
    assert args.preset_conflicts == []
    assert parse_args(["--c", _config(tmp_path, "fixmatch", "None")]).preset_conflicts == []
    with pytest.raises(SystemExit):
        parse_args(["--c", _config(tmp_path, "fixmatch", "remop"), "--help"])
    assert "preset_conflicts" not in capsys.readouterr().out  # not a key a user sets
