"""USB's EMA model at the cost of one pass over the weights a step.

==============================================  ===================================================================
quirk in 0.3.2                                  what we do
==============================================  ===================================================================
``EMA.update`` allocates and clones a new       :class:`FastEMA`: the shadow tensors *are* the EMA model's
shadow tensor per parameter every step, and     parameters, updated in place by one ``torch._foreach_lerp_``
``EMAHook.after_train_step`` then loads the     (s + (1 - d) (p - s), USB's (1 - d) p + d s up to rounding: at
whole state dict into the EMA model and the     most an ulp a step; ``ema_m: 0`` copies the weights exactly); the
shadow again (two ``load_state_dict`` a step,   hook then copies the model's buffers (BN statistics) into the EMA
~2800 Python calls for ResNet-18)               model's, as USB's state-dict load does
``load_state_dict(shadow, strict=False)``       the tensors are paired by name once; a parameter the EMA model
skips a name the EMA model lacks silently       lacks is an error
a checkpoint loaded into the EMA model (USB's   the shadow is the EMA model, so what is evaluated and saved, and
end-of-run reload of model_best) leaves the     what the next update starts from, are always the same weights
shadow as it was
==============================================  ===================================================================

``ema_weight_decay`` (a plugin key, default 0: off) adds the decoupled weight decay of the ReMoP authors'
``WeightEMA``: right after each EMA update, every weight of the training model is multiplied by
(1 - lr x ema_weight_decay), lr being its parameter group's current learning rate (:func:`decay_weights`).
Parameters a network wrapper exempts from weight decay (``own_no_weight_decay``: ReMoP's centers, which the
released code keeps outside its model) are left alone.

``algorithm.ema`` keeps USB's interface (``shadow``, ``update``, ``apply_shadow``, ``restore``, ``load``);
tests/test_speed.py checks the EMA model against USB's hook over several steps.
"""

from __future__ import annotations

import torch
from semilearn.core.utils import EMA

from . import unwrap


def _buffers(module) -> dict:
    """The buffers ``state_dict`` holds (what USB's ``load_state_dict`` copies), by name."""
    params = {n for n, _ in module.named_parameters()}
    return {n: t for n, t in module.state_dict(keep_vars=True).items() if n not in params}


class FastEMA(EMA):
    """USB's :class:`EMA` whose shadow is the EMA model itself, updated in place."""

    def bind(self, ema_model, copy_weights: bool):
        """Make ``ema_model``'s parameters the shadow; ``copy_weights``: start them from the model's (USB's
        ``register``), else keep them (USB's ``load``, on resume)."""
        ema_params, ema_buffers = dict(ema_model.named_parameters()), _buffers(ema_model)
        params, buffers = dict(self.model.named_parameters()), _buffers(self.model)
        missing = [n for n in params if n not in ema_params] + [n for n in buffers if n not in ema_buffers]
        if missing:
            raise RuntimeError(f"EMA: the EMA model has no {missing[0]!r} of the training model "
                               f"({len(missing)} missing); the two networks must have the same structure")
        self.shadow = {n: ema_params[n].data for n in params}
        self._params, self._shadow = list(params.values()), list(self.shadow.values())
        self._buffers = ([ema_buffers[n] for n in buffers], list(buffers.values()))
        if copy_weights:
            with torch.no_grad():
                torch._foreach_copy_(self._shadow, self._params)

    def register(self):
        raise RuntimeError("FastEMA's shadow is the EMA model: use bind(ema_model, copy_weights=True)")

    def load(self, ema_model):
        self.bind(ema_model, copy_weights=False)

    def update(self):
        with torch.no_grad():
            torch._foreach_lerp_(self._shadow, self._params, 1.0 - self.decay)

    def copy_buffers(self):
        """The model's buffers (BatchNorm statistics) into the EMA model, as USB's state-dict load does."""
        if self._buffers[0]:
            with torch.no_grad():
                torch._foreach_copy_(*self._buffers)


def before_run(self, algorithm):
    """USB's ``EMAHook.before_run`` with :class:`FastEMA` bound to the EMA model."""
    algorithm.ema = FastEMA(algorithm.model, algorithm.ema_m)
    algorithm.ema.bind(algorithm.ema_model, copy_weights=not algorithm.resume)


def after_train_step(self, algorithm):
    if algorithm.ema is not None:
        algorithm.ema.update()
        algorithm.ema.copy_buffers()
    decay_weights(algorithm)


def _decayed_groups(algorithm) -> list:
    """(optimizer parameter group, its parameters that ``ema_weight_decay`` shrinks) for every group."""
    net = unwrap(algorithm.model)
    exempt = {id(p) for n, p in net.named_parameters() if n in getattr(net, "own_no_weight_decay", ())}
    return [(group, [p for p in group["params"] if id(p) not in exempt]) for group in algorithm.optimizer.param_groups]


def decay_weights(algorithm):
    """``ema_weight_decay`` > 0: every decayed weight p <- p x (1 - lr x ema_weight_decay) (the released
    ``WeightEMA.step``, after the EMA update)."""
    rate = getattr(algorithm.args, "ema_weight_decay", 0.0)
    if not rate:
        return
    with torch.no_grad():
        for group, params in _decayed_groups(algorithm):
            if params:
                torch._foreach_mul_(params, 1.0 - group["lr"] * rate)


#: USB's own ``EMAHook`` methods, kept for comparison (tests)
USB_METHODS = {}


def install():
    from semilearn.core.hooks import EMAHook

    for name, ours in (("before_run", before_run), ("after_train_step", after_train_step)):
        USB_METHODS.setdefault(name, getattr(EMAHook, name))
        setattr(EMAHook, name, ours)
