"""USB 0.3.2's other imbalanced algorithms on FER data, on CPU and GPU, resumed exactly -- or refused in one line.

USB registers CReST / CReST+ (``crest``, ``crest+``: one class), CoSSL, SAW, DARP, DASO, DebiasPL and TRAS, and
``train.py`` lists every one as a valid ``imb_algorithm``. Each assumes CUDA somewhere, and several keep state a
checkpoint loses. :func:`install` patches their classes in place (USB's code is not copied or forked); each patch
below says what USB's code does and what we change. ABC and Adsh have their own adaptations (``usb_compat`` and
``remop_usb.algorithms.adsh``).

=========  ===================================================  ===================================================
algorithm  USB 0.3.2                                            here
=========  ===================================================  ===================================================
every one  runs on any base learner (TRAS and DebiasPL          base learner ``fixmatch`` only (what the FER
           assert; the others break on learners without weak    adaptations and the method contracts cover);
           logits/features)                                     another is refused in one line by the config
crest,     ``set_dataset`` calls USB's ``get_dataset`` by its   that name is the FER-aware ``get_dataset``; models
crest+     own imported name: None for FER datasets (traceback  placed by :func:`~remop_usb.usb_compat.place_model`
           in ``set_dataset``); ``re_init`` uses                (not ``send_model_cuda``)
           ``send_model_cuda`` (raises on CPU)
           ``get_split``: the fraction of class c's pseudo-     :func:`crest_keep_fractions`: by frequency RANK of
           labels kept is ``mu^((K-1)-c)^(1/alpha)``, c the     the labeled counts (FER label order does not start
           class INDEX (CIFAR-LT's head is class 0), and        with the head), ``(N_(K-1-r) / N_(0))^(1/alpha)``
           ``np.math`` (gone in NumPy 2)                        (the paper's Eq.; equal to USB's on CIFAR-LT)
           resume: ``pseudo_label_list`` not saved; a resume    the list is saved; :func:`crest_load_model`
           in generation g > 0 loads the weights, then          rebuilds generation g's labeled set and model
           ``train`` re-initialises them (generation restarts);  before loading; :func:`crest_train` (USB's loop)
           ``load_model`` moves DistAlign state with ``.cuda``   does not re-init the resumed generation, starts
           a resumed run's later generations at its epoch        later ones at epoch 0 and runs the resumed
                                                                generation's pending epoch-end hooks before it
                                                                pseudo-labels (exact resume)
saw        ``SAWWeightsHook`` and ``load_model`` put the class  the algorithm's device; ``before_run`` keeps
           weights on the GPU with ``.cuda`` (traceback on      weights loaded from a checkpoint (USB overwrites
           CPU); ``before_run`` re-initialises them after a     the refitted unlabeled weights on resume)
           resume
darp       ``refine_pseudo_labels`` ``.cuda()`` after warm-up   on the algorithm's device (:func:`cuda_calls_to`)
daso       the semantic pseudo-label mixed into a batch's       the weak view's similarities are taken from the
           pseudo-labels is ``probs_sim`` of the PREVIOUS       current step's forward pass
           step's batch (computed after the base learner        (:func:`daso_train_step`)
           pseudo-labelled)
           the feature queue is not saved (prototypes only):    queue saved and restored
           a resumed run's prototypes drift
debiaspl   ``p_hat <- ema_m * p_hat + (1 - ema_p) * mean p``:   ``debiaspl_ema_p`` for both (the paper's EMA)
           the MODEL's EMA momentum (0 in some runs: p_hat is
           then 0.001 x one batch's mean)
           the loss's tau is hard-coded 0.4                     ``debiaspl_tau``
           ``p_hat`` not saved                                  saved and restored
tras       ``train_step`` ``.cuda()`` after warm-up             on the algorithm's device (:func:`cuda_calls_to`)
           ``assert algorithm == 'fixmatch'``                   refused in one line by the config
cossl      refused (:data:`REFUSED`)
=========  ===================================================  ===================================================

Pseudo-label monitor (:mod:`remop_usb.pseudo_labels`): CReST, SAW, DARP, DASO and DebiasPL train on their
pseudo-labels through the base learner's ``consistency_loss`` (DARP's refined, DASO's blended, CReST's
distribution-aligned, DebiasPL's debiased argmax; SAW's and DebiasPL's losses replace the module, the monitor hooks the
replacement), so source ``pl`` is what each trains on. TRAS adds its own unlabeled loss on the auxiliary head (a KL
to the logit-adjusted weak prediction under the aux head's mask): reported as source ``tras``.

ReMoP with one of these: USB builds ``DummyClass(IMB_ALGORITHMS[imb], ALGORITHMS[alg])`` from ONE imbalanced name;
ReMoP is itself an imbalanced algorithm (``imb_algorithm: remop``). Combining it with another would need a class
composing two imbalanced wrappers that both override ``train_step``, ``compute_prob``/``call_hook``, the model
(ReMoP's centers beside TRAS's aux head, CReST's per-generation model rebuild, DASO's own forward) and
``evaluate``; none of that is sound without redesigning both, so no config can ask for it (one ``imb_algorithm``
per run). README: "USB's imbalanced algorithms on FER".
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections import defaultdict

import numpy as np
import torch

from . import device_of, place_model

#: imbalanced algorithm -> the base learners it runs on here
BASES = {name: ("fixmatch",) for name in ("crest", "crest+", "saw", "darp", "daso", "debiaspl", "tras")}

#: imbalanced algorithm -> why it is refused (one line)
REFUSED = {
    "cossl": "imb_algorithm 'cossl' is refused: USB 0.3.2's CoSSL trains its teacher head outside USB's training "
             "loop (a CUDA-only classifier warm-up and feature mixup with their own data loaders and optimizer, a "
             "parameter-update hook that bypasses AMP and the non-finite-loss check), so it can neither run on CPU "
             "nor resume exactly without rewriting it, and its mixup reads a hard label's class as label.argmax() "
             "(always class 0); use abc, adsh, crest, crest+, darp, daso, debiaspl, saw or tras",
}


def refusal(algorithm, imb_algorithm):
    """Why ``algorithm`` + ``imb_algorithm`` cannot run here (one line), or None."""
    if imb_algorithm in REFUSED:
        return REFUSED[imb_algorithm]
    bases = BASES.get(imb_algorithm)
    if bases is not None and algorithm not in bases:
        return (f"imb_algorithm '{imb_algorithm}' runs on algorithm {' | '.join(bases)} here (the base learner its "
                f"FER adaptation and method contract cover), not '{algorithm}'")
    return None


def schedule_problem(args):
    """One line on keys of an imbalanced algorithm that USB accepts but that break it silently, or None.

    DASO (USB 0.3.2) blends its pseudo-labels from step ``daso_num_pretrain_iter`` on with its pseudo-label class
    distribution, counted after every ``daso_num_pl_dist_iter``-th step (``Hook.every_n_iters``: after step n - 1,
    2n - 1, ...) and all zeros until then. A blend before the first count divides 0 by 0: the distribution is NaN,
    so is every blended row, and its argmax makes every pseudo-label class 0 -- no error, no NaN loss. The first count
    precedes the first blend iff 1 <= daso_num_pl_dist_iter <= daso_num_pretrain_iter."""
    if getattr(args, "imb_algorithm", None) != "daso":
        return None
    count, blend = args.daso_num_pl_dist_iter, args.daso_num_pretrain_iter
    if 1 <= count <= blend:
        return None
    return (f"daso_num_pl_dist_iter ({count}) must be between 1 and daso_num_pretrain_iter ({blend}): DASO first "
            f"counts its pseudo-label distribution after step {count} - 1 and blends from step {blend} on, and a "
            f"blend before the first count (0/0: NaN) turns every pseudo-label into class 0")


# -- CUDA calls in USB's code --------------------------------------------------------------------------------------

@contextlib.contextmanager
def cuda_calls_to(device):
    """Inside, ``Tensor.cuda(...)`` moves to ``device`` when that is the CPU (on a GPU nothing changes): for the few
    lines of USB's code that call ``.cuda()`` on tensors unconditionally (DARP's refinement, TRAS's step)."""
    if device.type == "cuda":
        yield
        return
    real = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to(device)
    try:
        yield
    finally:
        torch.Tensor.cuda = real


def _on_device(method, device_from):
    """``method`` run inside :func:`cuda_calls_to` the device of the algorithm ``device_from(self, ...)``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with cuda_calls_to(device_of(device_from(self, *args, **kwargs))):
            return method(self, *args, **kwargs)

    return wrapper


# -- CReST / CReST+ ------------------------------------------------------------------------------------------------

def crest_keep_fractions(lb_counts, alpha) -> np.ndarray:
    """Per class, the fraction of its pseudo-labels (most confident first) that CReST adds to the labeled set.

    CReST (Wei et al., CVPR 2021, Sec. 3.2): with the classes sorted by labeled frequency, rank r = 0 the most
    frequent, class of rank r keeps ``(N_(K-1-r) / N_(0)) ** (1 / alpha)`` -- the rarest class keeps all of its
    pseudo-labels, the most frequent the least. A class without labeled images counts as one image."""
    counts = np.maximum(np.asarray(lb_counts, dtype=np.float64), 1.0)
    order = np.argsort(-counts, kind="stable")
    by_rank = counts[order]
    fractions = np.empty_like(counts)
    fractions[order] = (by_rank[::-1] / by_rank[0]) ** (1.0 / alpha)
    return fractions


def crest_get_split(self, lb_data, lb_targets, eval_ulb_data, eval_ulb_targets, pseudo_label_list=None):
    """Replaces ``CReST.get_split``: the labeled set plus, per class, the top :func:`crest_keep_fractions` of its
    pseudo-labels (``pseudo_label_list[c]``: unlabeled indices predicted c, most confident first)."""
    if pseudo_label_list is None or not len(pseudo_label_list):
        self.print_fn("CReST: labeled set unchanged")
        return lb_data, lb_targets
    counts = np.bincount(np.asarray(lb_targets, dtype=np.int64), minlength=self.num_classes)
    fractions = crest_keep_fractions(counts, self.sampling_alpha)
    data, targets = [lb_data], [np.asarray(lb_targets)]
    for c, idx in enumerate(pseudo_label_list):
        picked = np.asarray(idx, dtype=np.int64)[:int(len(idx) * fractions[c])]
        data.append(eval_ulb_data[picked])
        targets.append(np.full(len(picked), c, dtype=np.asarray(lb_targets).dtype))
        self.print_fn(f"CReST: class {c} gains {len(picked)} pseudo-labels")
    return np.concatenate(data), np.concatenate(targets)


def crest_pseudo_label_list(algorithm) -> list:
    """Per class, the unlabeled indices the EMA model predicts as that class, most confident first (what
    ``CReST.train`` computes after each generation)."""
    logits = torch.as_tensor(algorithm.evaluate("eval_ulb", return_logits=True)["eval_ulb/logits"])
    score, pred = torch.softmax(logits.double(), dim=1).max(dim=1)
    out = []
    for c in range(algorithm.num_classes):
        idx = torch.where(pred == c)[0]
        out.append(idx[torch.argsort(score[idx], descending=True, stable=True)].numpy())
    return out


def _progressive_t(algorithm, gen):
    if not algorithm.pro_dist_align:
        return algorithm.dist_align_t
    cur = gen / max(1, algorithm.num_gens - 1)
    return (1.0 - cur) * 1.0 + cur * algorithm.dist_align_t


def crest_imb_init(original):
    def imb_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.cur_dist_align_t = _progressive_t(self, 0)

    imb_init.__doc__ = ("``CReST.imb_init`` plus generation 0's distribution-alignment temperature (USB sets it only "
                        "inside ``train``, so a step taken before -- a hook, a test -- had none).")
    return imb_init


def crest_train(self):
    """Replaces ``CReST.train``: USB's loop over generations (each retrains from the initial weights on the labeled
    set grown by the previous generation's pseudo-labels), made resumable: the generation a checkpoint was written
    in is not re-initialised (its weights were just loaded), later generations start at epoch 0, and when the
    checkpoint ended that generation its pending epoch-end hooks run before it pseudo-labels."""
    from semilearn.core.algorithmbase import AlgorithmBase

    from . import train_epochs
    from .checkpointing import finish_interrupted_epoch

    self.model.train()
    resumed_gen = getattr(self, "_crest_resumed_gen", None)
    for gen in range(self.start_gen, self.num_gens):
        self.gen = gen
        self.cur_dist_align_t = _progressive_t(self, gen)
        if gen > 0 and gen != resumed_gen:
            self.start_epoch = 0
            self.re_init()
        self.call_hook("before_run")
        train_epochs(self, lambda: ({**lb, **ulb} for lb, ulb in zip(self.loader_dict["train_lb"],
                                                                     self.loader_dict["train_ulb"])))
        finish_interrupted_epoch(self, AlgorithmBase.call_hook)  # resumed at a generation's last step
        self.print_fn(f"CReST generation {gen} finished (best eval acc so far {self.best_eval_acc:.4f}); "
                      f"pseudo-labelling the unlabeled set")
        self.pseudo_label_list = crest_pseudo_label_list(self)
        self.it = 0
    self.call_hook("after_run")


def crest_get_save_dict(original):
    def get_save_dict(self):
        save_dict = original(self)  # USB's adds gen, p_model, p_target
        save_dict["crest_pseudo_label_list"] = self.pseudo_label_list
        return save_dict

    get_save_dict.__doc__ = "CReST's save dict plus the pseudo-labels its generation's labeled set was grown by."
    return get_save_dict


def crest_load_model(self, load_path):
    """Replaces ``CReST.load_model``: in a checkpoint of generation g > 0, rebuild generation g first (its labeled
    set grown by the saved pseudo-labels, a fresh model and optimizer), then load the weights and state into it.
    DistAlign's state comes back with every hook's (``checkpointing``), on the algorithm's device."""
    from semilearn.core.algorithmbase import ImbAlgorithmBase

    from .checkpointing import read_checkpoint

    _, checkpoint = read_checkpoint(self, load_path)
    gen = int(checkpoint.get("gen", 0))
    if gen > 0:
        self.pseudo_label_list = checkpoint.get("crest_pseudo_label_list")
        self.gen = gen
        self.re_init()
    loaded = ImbAlgorithmBase.load_model(self, load_path)
    self.gen = self.start_gen = gen
    self.pseudo_label_list = checkpoint.get("crest_pseudo_label_list")
    self._crest_resumed_gen = gen
    return loaded


def _install_crest():
    import semilearn.core.algorithmbase as algorithmbase

    module = importlib.import_module("semilearn.imb_algorithms.crest.crest")
    module.get_dataset = algorithmbase.get_dataset  # the FER-aware dispatcher installed before this
    # re_init places each generation's models; the batch size was divided among the GPUs once, at build time
    module.send_model_cuda = lambda args, model, clip_batch=True: place_model(args, model, clip_batch=False)
    cls = module.CReST
    cls.imb_init = crest_imb_init(cls.imb_init)
    cls.get_split = crest_get_split
    cls.train = crest_train
    cls.get_save_dict = crest_get_save_dict(cls.get_save_dict)
    cls.load_model = crest_load_model


# -- SAW -----------------------------------------------------------------------------------------------------------

def saw_before_run(self, algorithm):
    """``SAWWeightsHook.before_run`` on the algorithm's device: labeled weights from the labeled counts, unlabeled
    weights from a uniform guess -- unless a checkpoint already brought them (a resumed run keeps its refit). A class
    without labeled images counts as one (as in the refit): USB's effective number 1 - beta^0 = 0 gives it an infinite
    weight, and the normalisation then zeroes every other class's (no labeled loss at all)."""
    from semilearn.imb_algorithms.saw.utils import effective_weights

    device = device_of(algorithm)
    if getattr(algorithm, "x_lb_weights", None) is None:
        algorithm.x_lb_weights = effective_weights(torch.as_tensor(self.y_lb_cnt).clamp(min=1)).to(device)
    if getattr(algorithm, "x_ulb_weights", None) is None:
        k = len(self.y_lb_cnt)
        algorithm.x_ulb_weights = effective_weights(torch.full((k,), self.num_ulb / k, dtype=torch.float64)).to(device)
    algorithm.print_fn(f"SAW class weights: labeled {algorithm.x_lb_weights.tolist()}, "
                       f"unlabeled {algorithm.x_ulb_weights.tolist()}")


def saw_after_train_epoch(self, algorithm):
    """``SAWWeightsHook.after_train_epoch`` on the algorithm's device: unlabeled weights refitted on the EMA
    model's predicted class counts (each at least 1)."""
    from semilearn.imb_algorithms.saw.utils import effective_weights

    logits = torch.as_tensor(algorithm.evaluate("eval_ulb", return_logits=True)["eval_ulb/logits"])
    counts = torch.bincount(logits.argmax(dim=-1), minlength=algorithm.num_classes).clamp(min=1)
    algorithm.x_ulb_weights = effective_weights(counts).to(device_of(algorithm))
    algorithm.print_fn(f"SAW unlabeled class weights: {algorithm.x_ulb_weights.tolist()}")


def saw_load_model(self, load_path):
    """``SAW.load_model`` with the class weights put on the algorithm's device (USB: ``.cuda``)."""
    from semilearn.core.algorithmbase import ImbAlgorithmBase

    checkpoint = ImbAlgorithmBase.load_model(self, load_path)
    device = device_of(self)
    self.x_lb_weights = checkpoint["x_lb_weights"].to(device)
    self.x_ulb_weights = checkpoint["x_ulb_weights"].to(device)
    return checkpoint


def _install_saw():
    from semilearn.imb_algorithms.saw.saw import SAW
    from semilearn.imb_algorithms.saw.utils import SAWWeightsHook

    SAWWeightsHook.before_run = saw_before_run
    SAWWeightsHook.after_train_epoch = saw_after_train_epoch
    SAW.load_model = saw_load_model


# -- DARP, TRAS: .cuda() in their steps ------------------------------------------------------------------------------

def _install_darp_tras():
    from semilearn.imb_algorithms.darp.utils import DARPPseudoLabelingHook
    from semilearn.imb_algorithms.tras.tras import TRAS

    hook = DARPPseudoLabelingHook
    hook.gen_ulb_targets = _on_device(hook.gen_ulb_targets, lambda self, algorithm, *a, **k: algorithm)
    TRAS.train_step = _on_device(TRAS.train_step, lambda self, *a, **k: self)
    TRAS.attach_pseudo_label_sources = attach_tras_monitor


# -- DASO ------------------------------------------------------------------------------------------------------------

def daso_similarities(algorithm, feats_w) -> torch.Tensor:
    """DASO's semantic prediction of weak-view features: softmax over classes of cos(feature, prototype) / T_proto."""
    prototypes = algorithm.queue.prototypes.to(feats_w.device)
    sim = algorithm.similarity_fn(feats_w.detach().unsqueeze(1), prototypes.unsqueeze(0)) / algorithm.T_proto
    return sim.softmax(dim=1)


def daso_train_step(original):
    """``DASO.train_step`` whose base learner, once DASO's blending starts, pseudo-labels with the similarities of
    THIS batch's weak view: a forward hook on the network takes them from the pass that computes the weak view's
    features (FixMatch: the concatenated pass, or the pass on ``x_ulb_w``) before the pseudo-labelling hook reads
    ``probs_sim``. USB's step sets ``probs_sim`` after the base learner ran, so the blend used the previous
    batch's rows."""

    @functools.wraps(original)
    def train_step(self, *args, **kwargs):
        if self.it < self.num_pretrain_iter:
            return original(self, *args, **kwargs)
        x_lb, x_ulb_w = kwargs["x_lb"], kwargs["x_ulb_w"]
        num_lb, num_ulb = x_lb.shape[0], x_ulb_w.shape[0]

        def take_weak(module, inputs, output):
            x = inputs[0]
            if x is x_ulb_w:
                self.probs_sim = daso_similarities(self, output["feat"])
            elif x.shape[0] == num_lb + 2 * num_ulb:  # use_cat: x_lb, x_ulb_w, x_ulb_s
                self.probs_sim = daso_similarities(self, output["feat"][num_lb:num_lb + num_ulb])

        from . import unwrap

        handle = unwrap(self.model).register_forward_hook(take_weak)
        try:
            return original(self, *args, **kwargs)
        finally:
            handle.remove()

    return train_step


def daso_get_save_dict(original):
    def get_save_dict(self):
        save_dict = original(self)
        save_dict["daso_queue_bank"] = {int(k): v.detach().cpu().clone() for k, v in self.queue.bank.items()}
        return save_dict

    get_save_dict.__doc__ = "DASO's save dict plus its per-class feature queue (USB saves the prototypes only)."
    return get_save_dict


def daso_load_model(original):
    def load_model(self, load_path):
        checkpoint = original(self, load_path)
        bank = checkpoint.get("daso_queue_bank") or {}
        self.queue.bank = defaultdict(lambda: torch.empty(0, self.queue.feat_dim), bank)
        self.queue.prototypes = self.queue.prototypes.to(device_of(self))
        return checkpoint

    load_model.__doc__ = "DASO's load_model plus its feature queue."
    return load_model


def _install_daso():
    from semilearn.imb_algorithms.daso.daso import DASO

    DASO.train_step = daso_train_step(DASO.train_step)
    DASO.get_save_dict = daso_get_save_dict(DASO.get_save_dict)
    DASO.load_model = daso_load_model(DASO.load_model)


# -- DebiasPL ------------------------------------------------------------------------------------------------------

def debiaspl_compute_prob(self, logits):
    """DebiasPL (Wang et al., CVPR 2022, Eq. 4-5): p_hat <- m * p_hat + (1 - m) * mean softmax(logits), then the
    debiased probabilities softmax(logits - tau * log p_hat); m = ``debiaspl_ema_p`` (USB multiplies p_hat by the
    model's EMA momentum ``ema_m`` instead)."""
    from semilearn.imb_algorithms.debiaspl.debiaspl import DebiasPL

    base = super(DebiasPL, self).compute_prob
    probs = base(logits)
    self.p_hat = self.ema_p * self.p_hat.to(probs.device) + (1 - self.ema_p) * probs.mean(dim=0).detach()
    return base(logits - self.tau * torch.log(self.p_hat))


def debiaspl_init(original):
    @functools.wraps(original)
    def __init__(self, args, **kwargs):
        original(self, args, **kwargs)
        self.consistency_loss.tau = self.tau  # USB's loss hard-codes 0.4
        self.p_hat = self.p_hat.to(device_of(self))

    return __init__


def debiaspl_get_save_dict(original):
    def get_save_dict(self):
        save_dict = original(self)
        save_dict["debiaspl_p_hat"] = self.p_hat.detach().cpu().clone()
        return save_dict

    return get_save_dict


def debiaspl_load_model(original):
    def load_model(self, load_path):
        checkpoint = original(self, load_path)
        if checkpoint.get("debiaspl_p_hat") is not None:
            self.p_hat = checkpoint["debiaspl_p_hat"].to(device_of(self))
        return checkpoint

    return load_model


def _install_debiaspl():
    from semilearn.imb_algorithms.debiaspl.debiaspl import DebiasPL

    DebiasPL.__init__ = debiaspl_init(DebiasPL.__init__)
    DebiasPL.compute_prob = debiaspl_compute_prob
    DebiasPL.get_save_dict = debiaspl_get_save_dict(DebiasPL.get_save_dict)
    DebiasPL.load_model = debiaspl_load_model(DebiasPL.load_model)


# -- TRAS: its own unlabeled loss, seen by the monitor ----------------------------------------------------------

def attach_tras_monitor(algorithm, monitor):
    """Report TRAS's unlabeled loss (``tras_kl_loss(outputs, targets, T, mask)``: the aux head's strong logits
    against the logit-adjusted weak ones, under the aux head's mask) as pseudo-label source ``tras``."""
    loss = getattr(algorithm, "tras_kl_loss", None)
    if isinstance(loss, torch.nn.Module):
        loss.register_forward_hook(lambda module, args, output: monitor.record("tras", args[1], args[3]))


def install():
    _install_crest()
    _install_saw()
    _install_darp_tras()
    _install_daso()
    _install_debiaspl()
