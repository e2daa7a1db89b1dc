"""The explainer: traced forward passes and the relevance passes run on them.

:class:`LRPFlex` binds the rules to a model. :meth:`LRPFlex.trace` runs one forward
pass under :class:`~isnet.lrp.tracing.LRPMode` and returns a :class:`Trace`, whose
``output`` carries the ordinary autograd graph. Each relevance pass is one
``torch.autograd.grad`` call of a scalar quantity computed from that output, made
with the trace's switch on, so the activations use the LRP rule; the relevance of a
tensor ``t`` is then ``t * grad``. With the Z^B rule the pass stops at the first
block's ReLU and :class:`~isnet.lrp.rules.zb.ZBRule` takes the relevance to the input.
``create_graph=True`` keeps the relevance differentiable, for losses on heatmaps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import IsnetWarning
from .core import BackwardSwitch, Rule
from .registry import Key, Rules
from .rules import BUILTIN
from .rules.zb import Bounds, FirstBlock, ZBRule
from .tracing import LRPMode, named_submodules, owned_buffers, record_outputs, restore_buffers

Target = Tensor | int | str
BATCH_STATS = ("gradient", "constant")
"""How training-mode batch norm enters the relevance pass (:class:`LRPFlex`'s ``batch_stats``)."""


def select_logits(output: Tensor, target: Target) -> Tensor:
    """The logit explained for each sample: (B,) from a class tensor, an int or ``"argmax"``."""
    if isinstance(target, str):
        if target != "argmax":
            raise ValueError(f"target must be a class tensor, an int, 'argmax' or 'all'; got {target!r}")
        index = output.detach().argmax(1)
    elif isinstance(target, int):
        if not 0 <= target < output.shape[1]:
            raise ValueError(f"target class {target} is out of range for {output.shape[1]} outputs")
        return output[:, target]
    else:
        index = torch.as_tensor(target, device=output.device).long().reshape(-1)
        if index.numel() != output.shape[0]:
            raise ValueError(f"target has {index.numel()} classes for a batch of {output.shape[0]}")
    return output.gather(1, index[:, None]).squeeze(1)


@dataclass
class Relevance:
    """Relevance of one explained quantity: at the input and at named modules."""

    input: Tensor
    layers: dict[str, Tensor]


class Trace:
    """One forward pass traced by :class:`LRPFlex`; explains quantities computed from its output.

    ``output`` is the model's output with the ordinary autograd graph, so training
    losses on it use the ordinary derivatives; only :meth:`relevance` uses the LRP rule.
    """

    def __init__(self, lrp: LRPFlex, x: Tensor, output: Tensor, switch: BackwardSwitch,
                 block: FirstBlock | None, layer_outputs: dict[str, Tensor]) -> None:
        self.lrp, self.x, self.output = lrp, x, output
        self._switch, self._block, self._layer_outputs = switch, block, layer_outputs
        self._zb_rules: dict[bool, ZBRule] = {}  # by grad mode: with or without a graph

    def relevance(self, quantity: Tensor, *, create_graph: bool = False,
                  retain_graph: bool | None = None) -> Relevance:
        """Relevance of the scalar ``quantity`` (a function of ``output``, summed over the batch)."""
        zb = self._block is not None
        start = self._block.relu_out if zb else self.x
        names = list(self._layer_outputs)
        wrt = [start, *self._layer_outputs.values()]
        self._switch.lrp = True
        try:
            with torch.enable_grad():
                grads = torch.autograd.grad(quantity, wrt, create_graph=create_graph,
                                            retain_graph=create_graph if retain_graph is None else retain_graph,
                                            allow_unused=True)
        finally:
            self._switch.lrp = False
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
        # the relevance stays in the autograd graph exactly when create_graph asks for it
        with torch.set_grad_enabled(create_graph):
            if zb:
                if create_graph not in self._zb_rules:
                    self._zb_rules[create_graph] = ZBRule.fold(self._block, self.lrp.epsilon, self.lrp.bounds)
                heat = self._zb_rules[create_graph](start * grads[0])
                if heat.shape != self.x.shape:  # the first linear layer saw the input flattened
                    heat = heat.reshape(self.x.shape)
            else:
                heat = self.x * grads[0]
            layers = {n: t * g for n, t, g in zip(names, wrt[1:], grads[1:])}
        if self.lrp.check_finite:
            _check_finite(heat, "input", self.x)
            for name, rel in layers.items():
                _check_finite(rel, name, self.x)
        return Relevance(heat, layers)

    def class_relevances(self, *, create_graph: bool = False, retain_graph: bool | None = None) -> list[Relevance]:
        """One relevance pass per class ``k``, of ``output[:, k]`` summed over the batch.

        The graph is kept between the passes; ``retain_graph`` applies to the last one.
        """
        classes = self.output.shape[1]
        with torch.enable_grad():  # also under torch.no_grad(): the quantities must be in the graph
            quantities = [self.output[:, k].sum() for k in range(classes)]
        return [self.relevance(q, create_graph=create_graph, retain_graph=True if k < classes - 1 else retain_graph)
                for k, q in enumerate(quantities)]

    def heatmap(self, target: Target, *, create_graph: bool = False,
                retain_graph: bool | None = None) -> Tensor:
        """Input relevance (B, C, ...) of one logit per sample; ``"all"`` gives (B, K, C, ...)."""
        if isinstance(target, str) and target == "all":
            parts = self.class_relevances(create_graph=create_graph, retain_graph=retain_graph)
            return torch.stack([part.input for part in parts], 1)
        with torch.enable_grad():
            quantity = select_logits(self.output, target).sum()
        return self.relevance(quantity, create_graph=create_graph, retain_graph=retain_graph).input


def _check_finite(relevance: Tensor, where: str, x: Tensor) -> None:
    if not torch.isfinite(relevance).all():
        bad = (~torch.isfinite(relevance)).sum().item()
        bad_input = (~torch.isfinite(x.detach())).sum().item()
        if bad_input:  # only looked at once something is wrong: no extra cost on the normal path
            raise FloatingPointError(
                f"the input holds {bad_input} NaN or infinite values, so the relevance is undefined; clean "
                "the input first (e.g. torch.nan_to_num)")
        raise FloatingPointError(
            f"{bad} non-finite relevance values at {where}: the model output or an activation "
            "overflowed, or epsilon is 0 where a pre-activation is 0. Check the input range, use "
            "epsilon > 0, or run in float32."
        )


def _check_bounds(bounds: Bounds) -> None:
    """Z^B bounds: a (low, high) pair, floats or per-channel tensors, with low <= high everywhere."""
    try:
        low, high = bounds
        low_t, high_t = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
        wrong = bool((low_t > high_t).any())
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"bounds must be a (low, high) pair of floats or per-channel tensors; "
                         f"got {bounds!r}") from None
    if wrong:
        raise ValueError(f"bounds: low must be <= high (the lowest and highest input values); got low={low}, "
                         f"high={high}")


def _check_input_range(x: Tensor, bounds: Bounds) -> None:
    """Warn (:class:`~isnet.errors.IsnetWarning`) when ``x`` lies far outside the Z^B ``bounds``.

    Far: some value more than one span (``high - low``) below ``low`` or above ``high``, taking the
    lowest ``low`` and highest ``high`` of per-channel bounds. Pixels in 0-255 against the default
    (0, 1), or normalised inputs against bounds for raw pixels, are caught; data augmentation that
    slightly oversteps the bounds is not. Bounds with ``low == high`` (no range: they only switch
    the box terms off) and non-finite inputs (the finite check names them) are not checked. One
    device synchronisation.
    """
    low, high = (torch.as_tensor(b, dtype=torch.float64) for b in bounds)
    low, high = low.min().item(), high.max().item()
    span = high - low
    if x.numel() == 0 or span == 0:
        return
    seen_low, seen_high = torch.stack(torch.aminmax(x.detach())).double().tolist()
    if not (math.isfinite(seen_low) and math.isfinite(seen_high)):
        return
    if seen_low < low - span or seen_high > high + span:
        warnings.warn(f"the input to explain ranges from {seen_low:.4g} to {seen_high:.4g}, far outside the Z^B "
                      f"bounds [{low:.4g}, {high:.4g}], so the heatmap would be wrong near the input. Pixels in "
                      "0-255: divide them by 255 (the default bounds are (0, 1)); normalised inputs: pass "
                      "bounds=(lowest, highest) of the normalised values, e.g. ((0 - mean) / std, (1 - mean) / std)",
                      IsnetWarning, stacklevel=3)


class LRPFlex:
    """LRP-Flex explainer bound to a model; reusable and thread-safe.

    Parameters
    ----------
    model
        Any network of the operations listed in docs/lrp-flex.md (activations as modules,
        functions or methods, reused or in place; normalisations; attention). It is never modified.
    epsilon
        LRP-epsilon stabiliser; ``0`` gives gradient x input on ReLU networks.
    zb
        Use the Z^B rule on the first conv/linear layer (see :mod:`isnet.lrp.rules.zb`).
    bounds
        Lowest and highest input values for Z^B: floats, or one value per channel.
    layers
        Names of modules (``model.named_modules()``) whose output relevance is also returned.
    check_finite
        Raise :class:`FloatingPointError` on NaN/inf relevance and, with Z^B, warn
        (:class:`~isnet.errors.IsnetWarning`) when an input value lies more than one span
        (``high - low``) outside ``bounds``, e.g. pixels in 0-255; one device sync each per call.
    rule
        ``"epsilon"`` (LRP-epsilon on conv/linear layers) or ``"z+"`` (LRP-z+, stabilised by
        ``epsilon``; see :mod:`isnet.lrp.rules.zplus`). The first block keeps Z^B either way.
    batch_stats
        Batch norm in training mode: ``"gradient"`` (its batch statistics' ordinary derivative,
        as the reference implementation; each image's heatmap then also depends on the other
        images' gradients) or ``"constant"`` (statistics held constant: each heatmap is its
        image's own). Batch norm in eval mode is linear either way.
    rules
        Rules for the model's own operations (:class:`~isnet.lrp.registry.Rules` or a mapping
        ``{module type or function: rule}``); they extend the built-in rules and replace those
        registered for the same operation. See "Your own rules" in docs/lrp-flex.md.
    """

    def __init__(self, model: nn.Module, *, epsilon: float = 0.01, zb: bool = True,
                 bounds: Bounds = (0.0, 1.0), layers: Sequence[str] = (), check_finite: bool = True,
                 rule: str = "epsilon", batch_stats: str = "gradient",
                 rules: Rules | Mapping[Key, Rule] | None = None) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if rule not in ("epsilon", "z+"):
            raise ValueError(f"rule must be 'epsilon' or 'z+', got {rule!r}")
        if batch_stats not in BATCH_STATS:
            raise ValueError(f"batch_stats must be one of {BATCH_STATS}, got {batch_stats!r}")
        self.rule, self.batch_stats = rule, batch_stats
        _check_bounds(bounds)
        self.rules = BUILTIN.extended(rules) if rules else BUILTIN
        self.rules.check(model)
        named_submodules(model, layers)
        self.model, self.epsilon, self.zb = model, float(epsilon), zb
        self.bounds, self.layers, self.check_finite = bounds, tuple(layers), check_finite

    def trace(self, x: Tensor, *, keep_buffers: bool = False) -> Trace:
        """Run the model on ``x`` and keep what the relevance pass needs.

        The forward pass is the model's own, in its train/eval mode. ``keep_buffers=False``
        (a training step, as :class:`isnet.ISNet` takes) lets it update buffers as any forward
        pass does: batch-norm running statistics in training mode. ``keep_buffers=True`` (what
        :meth:`explain`, :meth:`explain_prediction` and :func:`explain` use) leaves every buffer
        bit-identical; a training-mode batch norm still normalises with the batch statistics.
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            found = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"LRP-Flex explains floating-point inputs; got {found}. Convert images first, "
                            "e.g. x.float() / 255 for pixels in [0, 1] (the default Z^B bounds)")
        if self.zb and self.check_finite:
            _check_input_range(x, self.bounds)
        x_in = x if x.requires_grad else x.detach().requires_grad_(True)
        zplus = self.rule == "z+"  # then activations pass relevance unchanged, the layers divide by z+
        switch = BackwardSwitch(0.0 if zplus else self.epsilon)
        buffers = owned_buffers(self.model) if keep_buffers else []
        mode = LRPMode(self.rules, switch, x_in, first_block=self.zb, zplus=self.epsilon if zplus else None,
                       constant_bn=self.batch_stats == "constant", kept=[b for _, _, b in buffers])
        recorded = record_outputs(self.model, self.layers, mode.in_own_forward)
        try:  # rule hooks first: the recorded outputs of modules with a rule are the rule's
            with torch.enable_grad(), mode.modules(self.model), recorded as layer_outputs, mode:
                output = self.model(x_in)
        finally:
            restore_buffers(buffers)
        if not isinstance(output, Tensor) or output.dim() != 2:
            raise TypeError("LRP-Flex explains models whose output is a (batch, classes) tensor; "
                            f"got {type(output).__name__}{tuple(getattr(output, 'shape', ()))}")
        block = mode.tracker.result() if self.zb else None
        return Trace(self, x_in, output, switch, block, layer_outputs)

    def explain(self, x: Tensor, target: Target, *, create_graph: bool = False) -> Tensor:
        """Input heatmap (B, C, H, W), or (B, K, C, H, W) for ``target="all"``; the model's buffers are kept."""
        return self.trace(x, keep_buffers=True).heatmap(target, create_graph=create_graph)

    __call__ = explain

    def explain_prediction(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The logits (B, K) and the input heatmap of each sample's predicted class.

        One traced forward pass, the model's buffers kept; both are returned detached and no
        graph is kept.
        """
        trace = self.trace(x, keep_buffers=True)
        logits = trace.output.detach()
        return logits, trace.heatmap(logits.argmax(1)).detach()


def explain(model: nn.Module, x: Tensor, target: Target, *, epsilon: float = 0.01, zb: bool = True,
            bounds: Bounds = (0.0, 1.0), create_graph: bool = False, rule: str = "epsilon") -> Tensor:
    """LRP-Flex heatmap of ``model`` at ``x``; see :class:`LRPFlex`.

    ``target``: a class per sample (LongTensor), an int, ``"argmax"`` or ``"all"``
    (one map per class, shape (B, K, C, H, W)). The model's train/eval mode is respected and
    the model is left as it was: in training mode batch norm uses the batch statistics, as the
    model's forward does, but its running statistics (every buffer) stay bit-identical.
    """
    return LRPFlex(model, epsilon=epsilon, zb=zb, bounds=bounds, rule=rule).explain(x, target,
                                                                                  create_graph=create_graph)
