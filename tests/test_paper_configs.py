"""The paper's config files are generated from one table and agree with the paper's Sec. 5.2 and Tables 3-5."""

import os

import pytest

from remop_usb import paper_configs as pc
from remop_usb.config import parse_args

REPO = pc.REPO


def test_committed_configs_are_what_the_tables_generate():
    assert pc.stale() == []


def test_check_reports_an_edited_file(tmp_path):
    for rel, text in pc.all_configs().items():
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert pc.stale(str(tmp_path)) == []
    edited = tmp_path / "config" / "paper" / "table3" / "cpe_rafdb_500_50.yaml"
    edited.write_text(edited.read_text().replace("lr: 0.0001", "lr: 0.001"))
    (tmp_path / "config" / "paper" / "table3" / "old_method_rafdb_500_50.yaml").write_text("x: 1\n")
    assert pc.stale(str(tmp_path)) == ["config/paper/table3/cpe_rafdb_500_50.yaml",
                                       "config/paper/table3/old_method_rafdb_500_50.yaml (not generated: remove it)"]


def test_every_cell_of_tables_3_to_5_has_a_config_per_method():
    files = pc.all_configs()
    cells = {"table3": ["rafdb_2000_50", "rafdb_2000_150", "rafdb_500_50", "rafdb_500_150"],
             "table4": ["rafdb-ckplus_2000_150", "rafdb-ckplus_500_150", "ferplus_4000_150", "ferplus_1000_150"],
             "table5": ["rafdb+affectnet", "ferplus+affectnet"]}
    methods = ["supervised", "fixmatch", "abc", "adsh", "inpl", "cpe", "adacm", "remop_supervised",
               "remop_fixmatch", "remop_adacm"]
    beyond = ["remop_flexmatch", "remop_freematch", "remop_softmatch", "acr", "remop_acr", "cdmad", "remop_cdmad",
              "simpro", "remop_simpro", "crest", "crest_plus", "saw", "darp", "daso", "debiaspl", "tras",
              "bacon", "remop_bacon", "adello", "remop_adello", "metaexpert", "cpg", "remop_cpg"]
    expected = {f"config/paper/{t}/{m}_{s}.yaml" for t, settings in cells.items() for s in settings for m in methods}
    # the methods beyond the paper: Tables 3-4's settings (Table 5's AffectNet pool is the paper's own experiment)
    expected |= {f"config/paper/{t}/{m}_{s}.yaml" for t in ("table3", "table4") for s in cells[t] for m in beyond}
    assert {p for p in files if p.startswith("config/paper/")} == expected
    assert {f"config/demo/{m}.yaml" for m in methods + beyond} <= set(files)


def test_schedule_keys_keep_usbs_fractions_of_training():
    """USB's defaults are for its 256 x 1,024-iteration CIFAR runs: DARP refines after 200 epochs (78%), TRAS's head
    after 10 (3.9%), DASO blends after 5,120 iterations (1.95%); CReST's 6 generations share the run."""
    assert pc.schedule_keys("darp", 100, 100000) == {"darp_warmup_epochs": 78}  # 100 * 200 / 256 = 78.1
    assert pc.schedule_keys("darp", 80, 80000) == {"darp_warmup_epochs": 62}  # 62.5 -> 62 (round half to even)
    assert pc.schedule_keys("tras", 100, 100000) == {"tras_warmup_epochs": 4}  # 3.9
    assert pc.schedule_keys("daso", 100, 100000) == {"daso_num_pretrain_iter": 1953, "daso_num_pl_dist_iter": 100}
    # 2,000 iterations: blends after 39 (1.95%), so it recounts every 39 (a count must precede the first blend)
    assert pc.schedule_keys("daso", 10, 2000) == {"daso_num_pretrain_iter": 39, "daso_num_pl_dist_iter": 39}
    assert pc.schedule_keys("crest_plus", 100, 100000) == {"crest_num_gens": 6, "epoch": 16, "num_train_iter": 16000}
    assert pc.schedule_keys("cpg", 100, 100000) == {"cpg_warmup_epochs": 12}  # CPG's 30 of 256 epochs: 11.7
    assert pc.schedule_keys("remop_cpg", 80, 80000) == {"cpg_warmup_epochs": 9}  # 9.4
    assert pc.schedule_keys("fixmatch", 100, 100000) == {}
    darp = _parsed("config/paper/table3/darp_rafdb_500_150.yaml")
    assert (darp.darp_warmup_epochs, darp.epoch, darp.num_train_iter) == (78, 100, 100000)
    crest = _parsed("config/paper/table4/crest_ferplus_1000_150.yaml")  # 80 epochs: 6 generations of 13
    assert (crest.crest_num_gens, crest.epoch, crest.num_train_iter, crest.batch_size) == (6, 13, 13000, 32)


def _parsed(rel, *extra):
    return parse_args(["--c", os.path.join(REPO, rel), *extra])


@pytest.mark.parametrize("rel", sorted(p for p in pc.all_configs() if "/table" in p or "/demo/" in p))
def test_every_generated_config_is_valid(rel):
    args = _parsed(rel)
    assert args.seed == 0 and args.optim == "Adam" and args.lr_schedule == "constant"


def test_cells_carry_the_papers_hyper_parameters():
    ferplus = _parsed("config/paper/table4/remop_fixmatch_ferplus_1000_150.yaml")
    assert (ferplus.dataset, ferplus.num_classes, ferplus.num_labels, ferplus.lb_imb_ratio) == ("ferplus", 8, 1000, 150)
    assert (ferplus.batch_size, ferplus.epoch, ferplus.num_train_iter, ferplus.lr) == (32, 80, 80000, 1e-4)
    assert (ferplus.remop_beta, ferplus.remop_lambda_center, ferplus.remop_lambda_reg) == (0.5, 1e-4, 0.1)
    ck = _parsed("config/paper/table4/adsh_rafdb-ckplus_500_150.yaml")
    assert (ck.dataset, ck.test_dataset, ck.imb_algorithm, ck.batch_size, ck.num_train_iter) == \
        ("rafdb", "ckplus", "adsh", 16, 100000)
    pooled = _parsed("config/paper/table5/fixmatch_rafdb+affectnet.yaml")
    assert (pooled.num_labels, pooled.lb_imb_ratio, pooled.ulb_dataset, pooled.uratio) == (-1, 1, "affectnet", 5)
    vanilla = _parsed("config/paper/table3/supervised_rafdb_2000_50.yaml")
    assert (vanilla.algorithm, vanilla.imb_algorithm, vanilla.p_cutoff if hasattr(vanilla, "p_cutoff") else None) == \
        ("supervised", None, None)


def test_readme_examples_equal_their_table_3_cell():
    example = _parsed("config/remop_fixmatch_rafdb.yaml")
    cell = _parsed("config/paper/table3/remop_fixmatch_rafdb_500_150.yaml")
    differ = {k for k in vars(cell) if getattr(cell, k) != getattr(example, k)}
    assert differ == {"save_dir", "c"}


# -- presets: a generated config never pins a key that a preset sets --------------------------------------------

def _preset_runs():
    """(config, preset class, preset name) for every generated config whose algorithms declare presets."""
    import yaml

    from remop_usb.config import preset_classes

    runs, files = [], pc.all_configs()
    for rel in sorted(files):
        keys = yaml.safe_load(files[rel])
        imb = None if keys["imb_algorithm"] in (None, "None") else keys["imb_algorithm"]
        for cls in preset_classes(keys["algorithm"], imb):
            runs += [(rel, cls, preset) for preset in cls.PRESETS]
    return runs


PRESET_RUNS = _preset_runs()


def test_every_preset_bearing_config_is_covered():
    files = {rel for rel, _, _ in PRESET_RUNS}
    # 3 ReMoP methods x 10 paper cells, 9 ReMoP methods beyond the paper x 8 cells of Tables 3-4, 12 ReMoP demo
    # configs, the README example
    assert len(files) == 3 * 10 + 9 * 8 + 12 + 1
    assert {preset for _, _, preset in PRESET_RUNS} == {"paper", "official"}


@pytest.mark.parametrize("rel,cls,preset", PRESET_RUNS, ids=[f"{r}-{p}" for r, _, p in PRESET_RUNS])
def test_each_preset_takes_effect_on_each_generated_config(rel, cls, preset, capsys):
    from remop_usb.config import IMPLIED_BY, build_parser, preset_keys

    args = _parsed(rel, f"--{cls.PRESET_KEY}", preset)
    defaults = {a.dest: a.default for a in build_parser(args.algorithm, args.imb_algorithm)._actions}
    demo_budget = "/demo/" in rel  # the demo keeps its num_train_iter (CPU budget); the line names it
    for key in preset_keys(cls):
        expected = cls.PRESETS[preset].get(key, defaults[key])  # paper: the argument default
        if demo_budget and key in IMPLIED_BY:
            assert getattr(args, key) == args.num_train_iter // args.epoch
            continue
        assert getattr(args, key) == expected, (key, getattr(args, key), expected)
    lines = capsys.readouterr().out.splitlines()
    named = [line for line in lines if line.startswith(f"[remop-usb] {cls.PRESET_KEY} ")]
    if demo_budget and preset == "official":
        path = os.path.join(REPO, rel)
        with open(path) as f:
            line = next(i for i, text in enumerate(f, 1) if text.startswith("num_train_iter:"))
        assert named == [f"[remop-usb] remop_preset official sets num_iter_per_epoch=800; {path}:{line} sets "
                         f"num_train_iter {args.num_train_iter} (epoch {args.epoch}: "
                         f"{args.num_train_iter // args.epoch} per epoch), which wins"]
        assert args.num_train_iter // args.epoch != 800
    else:
        assert named == []


def test_paper_defaults_are_the_papers():
    """The paper preset is the argument defaults: Sec. 5.2's 1,000 iterations an epoch, the unsupervised loss
    unweighted (Eq. 9), USB's one forward pass, no extra weight decay (Adam, constant lr), USB's crop."""
    args = _parsed("config/paper/table3/remop_fixmatch_rafdb_500_150.yaml")
    assert (args.num_iter_per_epoch, args.epoch, args.num_train_iter) == (1000, 100, 100000)
    assert (args.ulb_loss_ratio, args.use_cat, args.ema_weight_decay) == (1.0, True, 0.0)
    assert (args.crop_prob, args.crop_padding_mode) == (1.0, "reflect")
    official = _parsed("config/paper/table3/remop_fixmatch_rafdb_500_150.yaml", "--remop_preset", "official")
    assert (official.num_iter_per_epoch, official.epoch, official.num_train_iter) == (800, 100, 80000)
