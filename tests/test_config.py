"""Config loading: USB key names, CLI over YAML, strict keys and types, presets."""

import pytest

from remop_usb.config import parse_args
from remop_usb.errors import UserError


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASE = "algorithm: fixmatch\nimb_algorithm: remop\ndataset: rafdb\nnum_classes: 7\nnet: resnet18_fer\n"


def test_command_line_overrides_yaml(tmp_path):
    cfg = write(tmp_path, BASE + "lr: 0.5\nnum_labels: 100\n")
    args = parse_args(["--c", cfg, "--lr", "0.25"])
    assert args.lr == 0.25 and args.num_labels == 100
    assert args.algorithm == "fixmatch" and args.imb_algorithm == "remop"


def test_algorithm_options_come_from_usb_get_argument(tmp_path):
    cfg = write(tmp_path, BASE + "p_cutoff: 0.9\nremop_beta: 0.3\n")
    args = parse_args(["--c", cfg])
    assert args.p_cutoff == 0.9 and args.remop_beta == 0.3
    assert args.T == 0.5  # FixMatch's own default, declared by USB's FixMatch.get_argument()


def test_yaml_numbers_in_any_spelling(tmp_path):
    cfg = write(tmp_path, BASE + "lr: 1e-4\nremop_lambda_center: 1.0e-4\nnum_labels: 500\n")
    args = parse_args(["--c", cfg])
    assert args.lr == 1e-4 and args.remop_lambda_center == 1e-4 and args.num_labels == 500


def test_unknown_key_names_file_line_and_closest(tmp_path):
    cfg = write(tmp_path, BASE + "\n# comment\nnum_lables: 100\n")
    with pytest.raises(UserError, match=r"c\.yaml:8: unknown key 'num_lables'; did you mean 'num_labels'\?"):
        parse_args(["--c", cfg])


def test_key_of_an_algorithm_not_in_use(tmp_path):
    cfg = write(tmp_path, "algorithm: fixmatch\nremop_beta: 0.5\n")
    with pytest.raises(UserError, match=r"c\.yaml:2: key 'remop_beta' is an option of imb_algorithm 'remop'"):
        parse_args(["--c", cfg])


@pytest.mark.parametrize("line,message", [
    ("num_labels: many", r"c\.yaml:6: key 'num_labels' expects an integer, got 'many'"),
    ("num_labels: 2.5", r"key 'num_labels' expects an integer, got 2.5"),
    ("lr: [1, 2]", r"key 'lr' expects a finite number"),
    ("use_cat: maybe", r"key 'use_cat' expects true or false, got 'maybe'"),
    ("optim: Adagrad", r"key 'optim' must be one of SGD, AdamW, Adam; got 'Adagrad'"),
    ("remop_mix: average", r"key 'remop_mix' must be one of prob, logit; got 'average'"),
])
def test_wrong_types_and_choices(tmp_path, line, message):
    cfg = write(tmp_path, BASE + line + "\n")
    with pytest.raises(UserError, match=message):
        parse_args(["--c", cfg])


def test_unknown_names_list_the_registered_ones(tmp_path):
    with pytest.raises(UserError, match=r"unknown algorithm 'fixmach'; did you mean 'fixmatch'\? registered: .*"):
        parse_args(["--c", write(tmp_path, "algorithm: fixmach\n")])
    with pytest.raises(UserError, match=r"unknown imb_algorithm 'remopp'.*registered: abc, adsh, .*remop"):
        parse_args(["--c", write(tmp_path, "imb_algorithm: remopp\n")])
    with pytest.raises(UserError, match=r"unknown dataset 'rafbd'; did you mean 'rafdb'\?"):
        parse_args(["--c", write(tmp_path, BASE.replace("rafdb", "rafbd"))])
    with pytest.raises(UserError, match=r"unknown net 'resnet18_fr'; did you mean 'resnet18_fer'\?"):
        parse_args(["--c", write(tmp_path, BASE.replace("resnet18_fer", "resnet18_fr"))])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        parse_args(["--c", str(tmp_path / "nope.yaml")])
    with pytest.raises(UserError, match=r"c\.yaml:2: not valid YAML"):
        parse_args(["--c", write(tmp_path, "algorithm: fixmatch\nlr: 0.1: x\n")])
    with pytest.raises(UserError, match="must be a multiple of epoch"):
        parse_args(["--c", write(tmp_path, BASE + "epoch: 3\nnum_train_iter: 100\n")])


def test_official_preset_fills_only_keys_not_set_explicitly(tmp_path):
    cfg = write(tmp_path, BASE + "remop_preset: official\nremop_mix: prob\n")
    args = parse_args(["--c", cfg, "--remop_reg", "paper"])
    assert args.remop_similarity == "dot"            # from the preset
    assert args.remop_center_grad_scale == 1e4       # from the preset
    assert args.ulb_loss_ratio == 0.2                # the released code's hidden unsupervised weight
    assert args.remop_ulb_center_view == "strong" and args.remop_eval_centers == "live"
    assert args.remop_mix == "prob"                  # YAML wins over the preset
    assert args.remop_reg == "paper"                 # the command line wins over the preset
    assert (args.use_cat, args.ema_weight_decay, args.crop_prob, args.crop_padding_mode) == (False, 0.02, 0.5,
                                                                                            "constant")
    assert (args.num_iter_per_epoch, args.num_train_iter) == (800, 800)  # epoch 1 (USB's default) of 800


def test_paper_is_the_default_preset(tmp_path):
    args = parse_args(["--c", write(tmp_path, BASE)])
    assert (args.remop_preset, args.remop_similarity, args.remop_mix, args.remop_reg) == (
        "paper", "cosine", "prob", "paper")
    assert args.remop_center_grad_scale == 1.0 and args.ulb_loss_ratio == 1.0
    assert (args.use_cat, args.ema_weight_decay, args.crop_prob, args.crop_padding_mode) == (True, 0.0, 1.0,
                                                                                            "reflect")
    assert (args.num_iter_per_epoch, args.num_train_iter) == (1000, 1000)


def test_help_mentions_precedence_and_plugin_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--c", write(tmp_path, BASE), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "OVERRIDE the YAML" in out and "--remop_beta" in out and "--lr_schedule" in out


#: the YAML spellings of "no value" (config keys that are unset); every other value is taken as written
NONE_SPELLINGS = ("None", "none", "null", "")


def as_written(value):
    return None if isinstance(value, str) and value in NONE_SPELLINGS else value


def test_every_shipped_config_runs_with_the_values_it_writes():
    import glob
    import os

    from ruamel.yaml import YAML

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(f for f in glob.glob(os.path.join(repo, "config", "**", "*.yaml"), recursive=True)
                   if os.sep + "grids" + os.sep not in f)  # grids are read by remop-usb sweep (tests/test_sweep.py)
    assert len(files) >= 100
    for path in files:
        with open(path, encoding="utf-8") as f:
            written = YAML(typ="safe").load(f) or {}
        args = vars(parse_args(["--c", path]))
        # each key the file sets is the run's value, as written: none dropped, converted wrongly or recomputed
        assert {key: args.get(key, "<missing>") for key in written} == {
            key: as_written(value) for key, value in written.items()}, path


def test_real_rafdb_config_has_the_papers_hyper_parameters():
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = parse_args(["--c", os.path.join(repo, "config", "remop_fixmatch_rafdb.yaml")])
    assert (args.num_labels, args.lb_imb_ratio) == (500, 150)
    assert (args.optim, args.lr, args.lr_schedule, args.batch_size, args.uratio) == ("Adam", 1e-4, "constant", 16, 1)
    assert (args.epoch, args.num_train_iter, args.img_size) == (100, 100000, 224)
    assert (args.p_cutoff, args.remop_beta, args.remop_lambda_center, args.remop_lambda_reg) == (0.95, 0.5, 1e-4, 0.1)
    assert args.net == "resnet18_fer" and args.use_pretrain and args.pretrain_path.endswith("resnet18_msceleb.pth")


# -- presets against explicit keys ----------------------------------------------------------------------------------

def _notices(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("[remop-usb]")]


def test_a_yaml_key_contradicting_the_preset_is_named_in_one_line_and_wins(tmp_path, capsys):
    cfg = write(tmp_path, BASE + "remop_preset: official\nulb_loss_ratio: 1.0\nremop_similarity: dot\n")
    args = parse_args(["--c", cfg])
    assert args.ulb_loss_ratio == 1.0  # the YAML wins
    assert args.remop_similarity == "dot"  # equal to the preset's: nothing to say
    assert _notices(capsys) == [f"[remop-usb] remop_preset official sets ulb_loss_ratio=0.2; {cfg}:7 sets 1.0, "
                                f"which wins"]


def test_a_flag_contradicting_the_preset_is_named_in_one_line_and_wins(tmp_path, capsys):
    args = parse_args(["--c", write(tmp_path, BASE + "ulb_loss_ratio: 1.0\n"), "--remop_preset", "official",
                       "--ulb_loss_ratio", "0.5", "--use_cat", "True"])
    assert (args.ulb_loss_ratio, args.use_cat) == (0.5, True)
    assert _notices(capsys) == [
        "[remop-usb] remop_preset official sets ulb_loss_ratio=0.2; command line sets --ulb_loss_ratio 0.5, which wins",
        "[remop-usb] remop_preset official sets use_cat=False; command line sets --use_cat True, which wins"]


def test_the_preset_sets_the_schedule_unless_num_train_iter_is_given(tmp_path, capsys):
    cfg = write(tmp_path, BASE + "epoch: 4\n")
    paper, official = parse_args(["--c", cfg]), parse_args(["--c", cfg, "--remop_preset", "official"])
    assert (paper.num_iter_per_epoch, paper.num_train_iter) == (1000, 4000)  # Sec. 5.2: 1,000 a epoch
    assert (official.num_iter_per_epoch, official.num_train_iter) == (800, 3200)  # released code: 800
    assert _notices(capsys) == []
    given = parse_args(["--c", cfg, "--remop_preset", "official", "--num_train_iter", "400"])
    assert (given.num_iter_per_epoch, given.num_train_iter) == (100, 400)
    assert _notices(capsys) == ["[remop-usb] remop_preset official sets num_iter_per_epoch=800; command line sets "
                                "--num_train_iter 400 (epoch 4: 100 per epoch), which wins"]
    with pytest.raises(UserError, match=r"command line: num_train_iter 400 is 4 epochs x 100, but .*c\.yaml:7 sets "
                                        r"num_iter_per_epoch 800; give one of them"):
        parse_args(["--c", write(tmp_path, BASE + "epoch: 4\nnum_iter_per_epoch: 800\n"), "--num_train_iter", "400"])
