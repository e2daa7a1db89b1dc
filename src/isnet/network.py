"""The :class:`ISNet` module, and which quantity each ISNet objective explains.

=========== ===================== =====================================================
objective   heatmaps per image    quantity explained
=========== ===================== =====================================================
standard    0 (argmax if asked)   nothing in training: the plain classifier
original    K (classes)           every logit, one relevance pass per class
selective   1                     ``eta = log(p_c + e) - log(1 - p_c + e)`` of one class
stochastic  1                     the top logit with probability 1/2, else another class
dual        2                     selective's ``eta``, once with LRP-epsilon, once with
                                  LRP-z+ on convolutions and linear layers (Dual ISNet)
=========== ===================== =====================================================

The Dual ISNet (Faster ISNet paper) penalises the background relevance of two heatmaps of
one quantity: LRP-epsilon's, which can be negative and noisy, and LRP-z+'s, which keeps only
positive contributions. Its two maps are stacked along K in that order; each gets its own
C1/C2 (:func:`calibration_groups`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import BOUND_GROUPS
from .lrp import Bounds, LRPFlex, Trace, select_logits
from .recipe import default

ISNET_OBJECTIVES = ("standard", "original", "selective", "stochastic", "dual")
"""The training objectives (:mod:`isnet.objectives`) whose heatmaps :class:`ISNet` computes."""


def calibration_groups(objective: str) -> tuple[str, ...]:
    """The groups of an ISNet objective's K heatmaps that get their own C1/C2, named by the suffix of their
    :class:`isnet.config.TrainConfig` fields: ``("",)`` (C1, C2) for one group, ``("", "_zplus")``
    (C1, C2 for LRP-epsilon; C1_zplus, C2_zplus for LRP-z+) for dual. With G groups, group i is
    ``heatmaps[:, i::G]``."""
    return BOUND_GROUPS if objective == "dual" else BOUND_GROUPS[:1]


SELECTIVE_CLASSES = ("lowest", "label", "highest")


def selective_quantity(logits: Tensor, classes: Tensor, eps: float = default("selective_eps")) -> Tensor:
    """Sum over the batch of ``log(p_c + eps) - log(1 - p_c + eps)``, ``p = softmax(logits)``.

    Computed in at least float32 (half-precision logits are promoted; float64 stays float64).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    p = torch.softmax(logits, 1).gather(1, classes[:, None]).squeeze(1)
    return (torch.log(p + eps) - torch.log(1.0 - p + eps)).sum()


def stochastic_classes(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per sample: the top class with probability 1/2, otherwise a uniformly drawn other class."""
    batch, classes = logits.shape
    top = logits.detach().argmax(1)
    device = logits.device
    rng_device = generator.device if generator else "cpu"
    keep_top = torch.rand(batch, generator=generator, device=rng_device) < 0.5
    offset = torch.randint(1, max(classes, 2), (batch,), generator=generator, device=rng_device)
    other = (top + offset.to(device)) % classes
    return torch.where(keep_top.to(device), top, other)


def default_supervised_layers(model: nn.Module) -> list[str]:
    """Layers for LRP deep supervision.

    ResNet: ``layer1..4``; DenseNet: the transition ReLUs; VGG-like ``features``: the output of
    each stage (the module before each max-pool); any other model: the outputs of its max-pools.
    """
    names = dict(model.named_modules())
    if all(f"layer{i}" in names for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    transitions = [n for n in names if n.startswith("features.transition") and n.endswith(".relu")]
    if transitions:
        return transitions
    features = names.get("features")
    if isinstance(features, nn.Sequential):
        children = list(features.named_children())
        stages = [f"features.{children[i - 1][0]}" for i, (_, m) in enumerate(children)
                  if isinstance(m, nn.MaxPool2d) and i > 0]
        if stages:
            return stages
    pools = [name for name, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
    if pools:
        return pools
    raise ValueError("no default deep-supervision layers for this architecture; pass a list of "
                     "module names (from model.named_modules()) as deep_supervision")


def input_heatmaps(heatmaps: Tensor | Mapping[str, Tensor]) -> Tensor:
    """The input heatmaps of :meth:`ISNet.forward`'s output (a dict with deep supervision)."""
    return heatmaps["input"] if isinstance(heatmaps, Mapping) else heatmaps


def epsilon_heatmaps(heatmaps: Tensor | Mapping[str, Tensor], objective: str) -> Tensor:
    """The LRP-epsilon input heatmaps of :meth:`ISNet.forward`'s output: all of them, or for dual its first group
    (the LRP-z+ maps have another scale, so logged background shares use these only)."""
    return input_heatmaps(heatmaps)[:, ::len(calibration_groups(objective))]


class ISNet(nn.Module):
    """A classifier trained to keep its relevance on the foreground.

    ``net(x)`` is the plain classifier. ``net(x, heatmaps=True)`` returns
    ``(logits, heatmaps)``: heatmaps (B, K, C, H, W), K = 1 (selective, stochastic),
    2 (dual: LRP-epsilon, LRP-z+) or the class count (original); with deep supervision a dict
    ``{"input": heatmaps, layer name: relevance (B, K, 1, h, w)}``. Heatmaps stay in
    the autograd graph in training mode, so a loss on them trains the network.

    The defaults are ``isnet train``'s (:mod:`isnet.recipe`); the reference implementation
    differentiates the batch statistics (``batch_stats="gradient"``).

    Parameters
    ----------
    model
        The classifier (any network LRP-Flex explains); kept unchanged as ``net.model``.
    objective
        The ISNet objective whose heatmaps it computes: ``standard | original | selective | stochastic |
        dual``.
    epsilon, zb, bounds, batch_stats
        LRP-Flex options (see :class:`isnet.LRPFlex`).
    selective_eps
        ``e_s`` of the selective quantity.
    selective_class
        Class whose ``eta`` the selective and dual objectives explain: ``"lowest"`` logit (the
        reference implementation's choice), the ``"label"``, or the ``"highest"`` logit.
    deep_supervision
        False, True (default layers for ResNet/DenseNet/VGG), or module names.
    """

    def __init__(self, model: nn.Module, objective: str = default("objective"), *, epsilon: float = default("epsilon"),
                 zb: bool = default("zb"), bounds: Bounds = (0.0, 1.0), selective_eps: float = default("selective_eps"),
                 selective_class: str = default("selective_class"),
                 deep_supervision: bool | Sequence[str] = default("deep_supervision"),
                 batch_stats: str = default("batch_stats")) -> None:
        super().__init__()
        if objective not in ISNET_OBJECTIVES:
            raise ValueError(f"objective must be one of {ISNET_OBJECTIVES}, got {objective!r}")
        if selective_class not in SELECTIVE_CLASSES:
            raise ValueError(f"selective_class must be one of {SELECTIVE_CLASSES}, got {selective_class!r}")
        if deep_supervision is True:
            layers = default_supervised_layers(model)
        else:
            layers = list(deep_supervision or [])
        self.model = model
        self.objective, self.selective_eps, self.selective_class = objective, selective_eps, selective_class
        self.layers = layers
        rules = ("epsilon", "z+") if objective == "dual" else ("epsilon",)
        self.explainers = [LRPFlex(model, epsilon=epsilon, zb=zb, bounds=bounds, layers=layers, check_finite=False,
                                   rule=rule, batch_stats=batch_stats) for rule in rules]

    @property
    def lrp(self) -> LRPFlex:
        """The LRP-epsilon explainer (the dual objective also has an LRP-z+ one)."""
        return self.explainers[0]

    def forward(self, x: Tensor, heatmaps: bool = False, labels: Tensor | None = None):
        if not heatmaps:
            return self.model(x)
        # one traced forward pass per rule (the dual objective's second pass also updates batch-norm statistics)
        traces = [explainer.trace(x) for explainer in self.explainers]
        heat = self.explain_trace(*traces, labels=labels)
        output = traces[0].output
        # the trace records a graph even under torch.no_grad(); the caller gets none then
        return (output if torch.is_grad_enabled() else output.detach()), heat

    def explain_trace(self, *traces: Trace, labels: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """The objective's heatmaps for traced forward passes, one per rule (two for dual)."""
        if len(traces) != len(self.explainers):
            raise ValueError(f"the {self.objective} objective explains {len(self.explainers)} trace(s), "
                             f"got {len(traces)}")
        create_graph = self.training and torch.is_grad_enabled()
        if self.objective == "original":
            parts = traces[0].class_relevances(create_graph=create_graph)
        else:
            classes = self.classes(traces[0].output, labels)
            parts = []
            for trace in traces:
                with torch.enable_grad():
                    quantity = self.quantity(trace.output, classes=classes)
                parts.append(trace.relevance(quantity, create_graph=create_graph))
        maps = torch.stack([p.input for p in parts], 1)
        if not self.layers:
            return maps
        out = {"input": maps}
        for name in self.layers:
            shape = tuple(parts[0].layers[name].shape)
            if len(shape) != 4:
                raise ValueError(f"deep supervision needs layers with (B, C, H, W) outputs; {name!r} gives "
                                 f"{shape}. Choose convolutional stages (the heatmap loss compares maps with masks)")
            out[name] = torch.stack([p.layers[name].sum(1, keepdim=True) for p in parts], 1)
        return out

    def classes(self, logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per sample, the class whose logit (stochastic, standard) or ``eta`` (selective, dual) is explained."""
        if self.objective == "stochastic":
            return stochastic_classes(logits)
        if self.objective == "standard" or self.selective_class == "highest":
            return logits.detach().argmax(1)
        if self.selective_class == "label":
            if labels is None:
                raise ValueError("selective_class='label' needs labels: net(x, heatmaps=True, labels=y)")
            return labels
        return logits.detach().argmin(1)

    def quantity(self, logits: Tensor, *, classes: Tensor) -> Tensor:
        """The scalar explained by selective, dual, stochastic and standard (batch sum)."""
        if self.objective in ("stochastic", "standard"):
            return select_logits(logits, classes).sum()
        return selective_quantity(logits, classes, self.selective_eps)
