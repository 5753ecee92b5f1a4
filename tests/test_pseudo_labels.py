"""The pseudo-label monitor (:mod:`remop_usb.pseudo_labels`) on tiny hand-computed cases.

Every method contract reads its figures: ``mask`` is the mean of the mask over the batch's rows, ``acc`` the
mask-weighted share of right pseudo-labels among the accepted rows whose true label is known (-1: unknown), and
``acc`` is None -- never 0 -- when no such row is accepted. Each expected value below is worked out by hand in the
comment beside it.
"""

import types

import pytest
import torch
from semilearn.core.criterions import ConsistencyLoss

from remop_usb import pseudo_labels
from remop_usb.pseudo_labels import PseudoLabelMonitor, attach_pseudo_label_monitor, run_summary

#: the kept-back labels of a 6-image unlabeled set; image 4's label is unknown
TARGETS = [0, 1, 2, 3, -1, 2]


def fake_algorithm(num_train_iter=100):
    """What the monitor reads of a learner: the iteration, the step's log and the run's length."""
    return types.SimpleNamespace(it=0, log_dict={}, args=types.SimpleNamespace(num_train_iter=num_train_iter))


def one_step(monitor, algorithm, idx, pseudo, mask=None, source="pl"):
    """One training step in which the learner's unlabeled loss saw ``pseudo`` and ``mask`` for images ``idx``;
    the figures it logged."""
    algorithm.log_dict = {}
    monitor.before_train_step(algorithm)
    monitor.batch({"idx_ulb": torch.tensor(idx)})
    monitor.record(source, torch.tensor(pseudo), None if mask is None else torch.tensor(mask))
    monitor.after_train_step(algorithm)
    algorithm.it += 1
    return algorithm.log_dict


# -- one step ----------------------------------------------------------------------------------------------------

def test_all_rows_accepted():
    # images 3, 2, 1, 0 have labels 3, 2, 1, 0; pseudo-labels 3, 2, 0, 0: right, right, wrong, right -> 3/4
    log = one_step(PseudoLabelMonitor(TARGETS), fake_algorithm(), [3, 2, 1, 0], [3, 2, 0, 0], [1.0, 1.0, 1.0, 1.0])
    assert log == {"train/pl_mask": 1.0, "train/pl_acc": 0.75}


def test_no_mask_means_every_row_is_accepted():
    log = one_step(PseudoLabelMonitor(TARGETS), fake_algorithm(), [3, 2, 1, 0], [3, 2, 0, 0])
    assert log == {"train/pl_mask": 1.0, "train/pl_acc": 0.75}


def test_no_row_accepted_has_no_accuracy():
    monitor, algorithm = PseudoLabelMonitor(TARGETS), fake_algorithm()
    log = one_step(monitor, algorithm, [0, 1, 2, 3], [0, 1, 2, 3], [0.0, 0.0, 0.0, 0.0])
    assert log == {"train/pl_mask": 0.0}  # no train/pl_acc at all: not 0, not 1
    assert monitor.history["pl"] == [[0, 0.0, 4, 0.0, None]]  # [it, mask, rows, passed, acc]
    assert monitor.summary("pl") == {"steps": 1, "mask": 0.0, "acc": None}


def test_accuracy_counts_the_accepted_rows_only():
    # rows 0, 1 accepted and right; rows 2, 3 rejected and wrong: mask 2/4, accuracy 2/2 (over every row: 2/4)
    log = one_step(PseudoLabelMonitor(TARGETS), fake_algorithm(), [0, 1, 2, 3], [0, 1, 0, 0], [1.0, 1.0, 0.0, 0.0])
    assert log == {"train/pl_mask": 0.5, "train/pl_acc": 1.0}


def test_soft_labels_are_read_by_their_argmax_and_weights_count():
    soft = [[0.7, 0.1, 0.1, 0.1],   # argmax 0, label 0: right
            [0.1, 0.2, 0.6, 0.1],   # argmax 2, label 1: wrong
            [0.1, 0.1, 0.5, 0.3],   # argmax 2, label 2: right
            [0.2, 0.2, 0.2, 0.4]]   # argmax 3, label 3: right
    weights = [0.25, 1.0, 0.5, 0.25]
    # mask: (0.25 + 1 + 0.5 + 0.25) / 4 = 0.5; accuracy: (0.25 + 0 + 0.5 + 0.25) / 2.0 = 0.5 (unweighted: 3/4)
    log = one_step(PseudoLabelMonitor(TARGETS), fake_algorithm(), [0, 1, 2, 3], soft, weights)
    assert log == {"train/pl_mask": 0.5, "train/pl_acc": 0.5}


def test_rows_of_unknown_label_count_in_the_mask_not_in_the_accuracy():
    # images 4, 0, 1, 5: labels unknown, 0, 1, 2; pseudo-labels 0, 0, 0, 2 -> known rows right, wrong, right: 2/3
    monitor = PseudoLabelMonitor(TARGETS)
    log = one_step(monitor, fake_algorithm(), [4, 0, 1, 5], [0, 0, 0, 2], [1.0, 1.0, 1.0, 1.0])
    assert log["train/pl_mask"] == 1.0
    assert log["train/pl_acc"] == pytest.approx(2 / 3, abs=1e-12)
    assert monitor.history["pl"][0][3] == 3.0  # passed: the accepted rows of known label


def test_only_unknown_labels_accepted_has_no_accuracy():
    log = one_step(PseudoLabelMonitor(TARGETS), fake_algorithm(), [4, 4], [0, 1], [1.0, 1.0])
    assert log == {"train/pl_mask": 1.0}


def test_each_source_keeps_the_first_loss_of_a_step():
    monitor, algorithm = PseudoLabelMonitor(TARGETS), fake_algorithm()
    algorithm.log_dict = {}
    monitor.before_train_step(algorithm)
    monitor.batch({"idx_ulb": torch.tensor([0, 1])})
    monitor.record("pl", torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))    # the learner's loss: 2/2 right
    monitor.record("pl", torch.tensor([1, 0]), torch.tensor([1.0, 1.0]))    # a later loss of the step: ignored
    monitor.record("remop", torch.tensor([0, 0]), torch.tensor([1.0, 0.0]))  # another source: its own figures
    monitor.after_train_step(algorithm)
    assert algorithm.log_dict == {"train/pl_mask": 1.0, "train/pl_acc": 1.0,
                                  "train/remop_mask": 0.5, "train/remop_acc": 1.0}
    assert one_step(monitor, algorithm, [0, 1], [1, 0]) == {"train/pl_mask": 1.0, "train/pl_acc": 0.0}  # new step


@pytest.mark.parametrize("idx, mask", [
    ([0, 1, 2], [1.0, 1.0]),     # a mask of another length (a learner's extra views)
    ([0, 1], [1.0, 1.0, 1.0]),   # indices of another batch
])
def test_rows_that_are_not_the_batchs_images_are_not_recorded(idx, mask):
    monitor, algorithm = PseudoLabelMonitor(TARGETS), fake_algorithm()
    algorithm.log_dict = {}
    monitor.before_train_step(algorithm)
    monitor.batch({"idx_ulb": torch.tensor(idx)})
    monitor.record("pl", torch.tensor([0, 1, 2]), torch.tensor(mask))
    monitor.after_train_step(algorithm)
    assert algorithm.log_dict == {} and monitor.history == {}


def test_a_batch_without_indices_is_not_recorded():
    monitor, algorithm = PseudoLabelMonitor(TARGETS), fake_algorithm()
    monitor.before_train_step(algorithm)
    monitor.batch({"x_ulb_w": torch.zeros(2, 3)})
    monitor.record("pl", torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))
    monitor.after_train_step(algorithm)
    assert algorithm.log_dict == {} and monitor.history == {}


# -- over steps --------------------------------------------------------------------------------------------------

def three_steps():
    """Steps of mask 1 (4 accepted, 3 right), 1/2 (2 accepted, 1 right) and 0 (none accepted)."""
    monitor, algorithm = PseudoLabelMonitor(TARGETS), fake_algorithm()
    one_step(monitor, algorithm, [0, 1, 2, 3], [0, 1, 2, 0], [1.0, 1.0, 1.0, 1.0])
    one_step(monitor, algorithm, [0, 1, 2, 3], [0, 0, 2, 3], [1.0, 1.0, 0.0, 0.0])
    one_step(monitor, algorithm, [0, 1, 2, 3], [0, 1, 2, 3], [0.0, 0.0, 0.0, 0.0])
    return monitor


def test_summary_weights_each_steps_accuracy_by_its_accepted_rows():
    monitor = three_steps()
    whole = monitor.summary("pl")
    # mask: (1 + 0.5 + 0) / 3; accuracy: (3 + 1) right of (4 + 2) accepted (the mean of 0.75 and 0.5 would be 0.625)
    assert whole["steps"] == 3
    assert whole["mask"] == pytest.approx(0.5, abs=1e-12)
    assert whole["acc"] == pytest.approx(4 / 6, abs=1e-12)


@pytest.mark.parametrize("last, expected", [
    (1, {"steps": 1, "mask": 0.0, "acc": None}),   # the step that accepted nothing
    (2, {"steps": 2, "mask": 0.25, "acc": 0.5}),   # mask (0.5 + 0) / 2, accuracy 1 right of 2
    (3, {"steps": 3, "mask": 0.5, "acc": pytest.approx(4 / 6, abs=1e-12)}),
])
def test_summary_of_the_last_steps(last, expected):
    assert three_steps().summary("pl", last=last) == expected


def test_summary_of_a_source_never_recorded_is_none():
    assert three_steps().summary("remop") is None


def test_history_keeps_the_last_steps_only(monkeypatch):
    monkeypatch.setattr(pseudo_labels, "HISTORY", 3)
    monitor, algorithm = PseudoLabelMonitor(TARGETS), fake_algorithm()
    for _ in range(5):
        one_step(monitor, algorithm, [0, 1], [0, 1])
    assert [row[0] for row in monitor.history["pl"]] == [2, 3, 4]


def run_of_five_steps(num_train_iter):
    """A learner that trained 5 steps of masks 1, 1, 1, 1/2 and 0 (every accepted pseudo-label right but one)."""
    monitor, algorithm = PseudoLabelMonitor(TARGETS), fake_algorithm(num_train_iter)
    for _ in range(3):
        one_step(monitor, algorithm, [0, 1, 2, 3], [0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0])  # 4 of 4 right
    one_step(monitor, algorithm, [0, 1, 2, 3], [0, 0, 2, 3], [1.0, 1.0, 0.0, 0.0])      # 1 of 2 right
    one_step(monitor, algorithm, [0, 1, 2, 3], [0, 1, 2, 3], [0.0, 0.0, 0.0, 0.0])      # none accepted
    algorithm.pseudo_label_monitor = monitor
    return algorithm


def test_run_summary_reads_the_final_tenth_of_the_steps():
    summary = run_summary(run_of_five_steps(num_train_iter=20))  # a tenth of 20: the last 2 steps
    assert summary["pl"]["final"] == {"steps": 2, "mask": 0.25, "acc": 0.5}
    run = summary["pl"]["run"]  # mask 3.5 / 5; accuracy 13 right of 14 accepted
    assert run["steps"] == 5
    assert run["mask"] == pytest.approx(0.7, abs=1e-12) and run["acc"] == pytest.approx(13 / 14, abs=1e-12)


def test_run_summary_of_a_short_run_reads_at_least_its_last_step():
    summary = run_summary(run_of_five_steps(num_train_iter=5))  # a tenth of 5 rounds to 0: one step
    assert summary["pl"]["final"] == {"steps": 1, "mask": 0.0, "acc": None}


def test_run_summary_without_a_monitor_is_empty():
    assert run_summary(fake_algorithm()) == {}


# -- attached to a learner ---------------------------------------------------------------------------------------

class FakeLearner:
    """The parts of a USB algorithm the monitor attaches to: its unlabeled set, consistency loss and batches."""

    def __init__(self, targets):
        self.dataset_dict = {"train_ulb": types.SimpleNamespace(targets=targets)}
        self.consistency_loss = ConsistencyLoss()
        self.hooks = {}
        self.it, self.log_dict = 0, {}

    def process_batch(self, **batch):
        return batch

    def register_hook(self, hook, name, priority):
        self.hooks[name] = (hook, priority)


@pytest.mark.parametrize("mask_as_keyword", [True, False])
def test_attached_monitor_reads_the_consistency_loss_of_the_batch(mask_as_keyword):
    learner = FakeLearner(TARGETS)
    monitor = attach_pseudo_label_monitor(learner)
    assert learner.pseudo_label_monitor is monitor
    assert learner.hooks == {"PseudoLabelMonitor": (monitor, "NORMAL")}
    monitor.before_train_step(learner)
    learner.process_batch(idx_ulb=torch.tensor([2, 3]))
    logits, pseudo, mask = torch.zeros(2, 4), torch.tensor([2, 0]), torch.tensor([1.0, 0.0])
    if mask_as_keyword:
        learner.consistency_loss(logits, pseudo, "ce", mask=mask)
    else:
        learner.consistency_loss(logits, pseudo, "ce", mask)
    monitor.after_train_step(learner)
    # image 2 (label 2) accepted as 2: right; image 3 rejected
    assert learner.log_dict == {"train/pl_mask": 0.5, "train/pl_acc": 1.0}


@pytest.mark.parametrize("targets", [None, []])
def test_no_monitor_without_kept_back_labels(targets):
    learner = FakeLearner(targets)
    assert attach_pseudo_label_monitor(learner) is None
    assert learner.hooks == {} and not hasattr(learner, "pseudo_label_monitor")
