"""Expert statistics from the experts' own forward pass: no routed expert is computed twice.

transformers' fused experts modules (`NemotronHExperts`, `GraniteMoeHybridExperts`) return only the
router-weighted sum of their experts, so a forward hook would have to recompute every routed expert
to see its output (about a quarter of a forward on Nemotron 3 Nano's proportions). Instead, while a
model is scored, its experts run through an implementation registered in transformers' public
`ExpertsInterface` (the mechanism behind `experts_implementation="grouped_mm"`):
`experts_forward_with_sums` in `experts.py`, which is transformers' eager loop keeping the
statistics of what it computes. A module that is not being observed (the skip-one-block branches of
the layer metrics, or a model never attached) runs the implementation the model had before.

    capture = ExpertCapture(model, enabled)    # switches the model to the scoring implementation
    capture.observe(module, callback)          # callback(sums) after each forward while enabled() is true
    capture.close()                            # the model's own implementation again

A model whose experts module does not dispatch through the interface keeps the hook that recomputes
(`experts.expert_sums`); `ExpertCapture.supported` says which.
"""

from __future__ import annotations

import weakref

from minitron.importance import experts as moe_maths

IMPLEMENTATION = "minitron_scoring"
_WATCHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # experts module -> ExpertCapture


def _eager(module):
    """The experts class's own forward (the eager loop) under transformers' dispatching wrapper."""
    fwd = type(module).forward
    return getattr(fwd, "__wrapped__", fwd)


def _scoring_forward(module, hidden_states, top_k_index, top_k_weights):
    capture = _WATCHED.get(module)
    if capture is None or not capture.enabled() or module not in capture.callbacks:
        previous = capture.previous if capture is not None else "eager"
        return capture_fallback(previous, module)(module, hidden_states, top_k_index, top_k_weights)
    gated = not hasattr(module, "up_proj")  # Granite: a fused gate_up_proj, act(gate x) · up x
    up = module.gate_up_proj if gated else module.up_proj
    out, sums = moe_maths.experts_forward_with_sums(hidden_states, top_k_index, top_k_weights, up,
                                                    module.down_proj, module.act_fn, gated=gated)
    capture.callbacks[module](sums)
    return out


def capture_fallback(name: str, module):
    """The forward of implementation `name` ("eager" or one registered in transformers)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if name == "eager" or name == IMPLEMENTATION or name not in ALL_EXPERTS_FUNCTIONS:
        return _eager(module)
    return ALL_EXPERTS_FUNCTIONS[name]


def _register() -> bool:
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:  # a transformers without the experts interface
        return False
    if IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, _scoring_forward)
    return True


class ExpertCapture:
    def __init__(self, model, enabled):
        self.model = model
        self.enabled = enabled  # () -> bool: the width collector's switch
        self.callbacks: dict = {}
        self.previous = getattr(model.config, "_experts_implementation", None) or "eager"
        self.supported = False
        if _register() and hasattr(model, "set_experts_implementation"):
            try:
                model.set_experts_implementation(IMPLEMENTATION)
                self.supported = model.config._experts_implementation == IMPLEMENTATION
            except (ValueError, KeyError, AttributeError):
                self.supported = False

    def observe(self, module, callback) -> bool:
        """Call `callback(sums)` after each enabled forward of `module`; False: it does not dispatch
        through the interface (the caller hooks it instead)."""
        if not self.supported or not hasattr(type(module).forward, "__wrapped__"):
            return False
        self.callbacks[module] = callback
        _WATCHED[module] = self
        return True

    def close(self) -> None:
        for module in self.callbacks:
            _WATCHED.pop(module, None)
        self.callbacks.clear()
        if self.supported:
            self.model.set_experts_implementation(self.previous)
            self.supported = False
