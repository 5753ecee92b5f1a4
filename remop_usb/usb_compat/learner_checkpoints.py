"""Loading checkpoints of USB learners that keep extra state, on any device.

===========================================================  ==========================================================
quirk in 0.3.2                                               what we do
===========================================================  ==========================================================
FlexMatch, FreeMatch and SoftMatch ``load_model`` move the   their ``load_model`` puts that state on the algorithm's
state they add to a checkpoint (classwise_acc, p_model,      device (CPU or its GPU) instead; nothing else changes
time_p, prob_max_mu_t, ...) with ``.cuda(...)``: loading
any checkpoint of theirs fails on CPU (results.json, resume)
===========================================================  ==========================================================
"""

from __future__ import annotations

import importlib

from . import device_of

#: (module, class) -> {checkpoint key USB's get_save_dict writes: name of the hook holding that attribute}
LEARNER_STATE = {
    ("semilearn.algorithms.flexmatch.flexmatch", "FlexMatch"): {
        "classwise_acc": "MaskingHook", "selected_label": "MaskingHook"},
    ("semilearn.algorithms.freematch.freematch", "FreeMatch"): {
        "p_model": "MaskingHook", "time_p": "MaskingHook", "label_hist": "MaskingHook"},
    ("semilearn.algorithms.softmatch.softmatch", "SoftMatch"): {
        "p_model": "DistAlignHook", "p_target": "DistAlignHook",
        "prob_max_mu_t": "MaskingHook", "prob_max_var_t": "MaskingHook"},
}


def _device_safe_load_model(cls, keys):
    def load_model(self, load_path):
        checkpoint = super(cls, self).load_model(load_path)
        device = device_of(self)
        for key, hook_name in keys.items():
            if key in checkpoint and checkpoint[key] is not None:
                setattr(self.hooks_dict[hook_name], key, checkpoint[key].to(device))
        return checkpoint

    load_model.__doc__ = f"{cls.__name__}.load_model with its extra state put on the algorithm's device."
    return load_model


def install():
    for (module_name, class_name), keys in LEARNER_STATE.items():
        cls = getattr(importlib.import_module(module_name), class_name)
        cls.load_model = _device_safe_load_model(cls, keys)
