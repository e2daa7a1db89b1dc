"""Which quantity each ISNet variant explains, and the :class:`ISNet` module.

=========== ===================== =====================================================
variant     heatmaps per image    quantity explained
=========== ===================== =====================================================
standard    0 (argmax if asked)   nothing in training: the plain classifier
original    K (classes)           every logit, one relevance pass per class
selective   1                     ``eta = log(p_c + e) - log(1 - p_c + e)`` of one class
stochastic  1                     the top logit with probability 1/2, else another class
=========== ===================== =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .lrp import Bounds, LRPFlex, Trace, select_logits

VARIANTS = ("standard", "original", "selective", "stochastic")
SELECTIVE_CLASSES = ("lowest", "label", "highest")


def selective_quantity(logits: Tensor, classes: Tensor, eps: float = 0.01) -> Tensor:
    """Sum over the batch of ``log(p_c + eps) - log(1 - p_c + eps)``, ``p = softmax(logits)``."""
    p = torch.softmax(logits.float(), 1).gather(1, classes[:, None]).squeeze(1)
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


class ISNet(nn.Module):
    """A classifier trained to keep its relevance on the foreground.

    ``net(x)`` is the plain classifier. ``net(x, heatmaps=True)`` returns
    ``(logits, heatmaps)``: heatmaps (B, K, C, H, W), K = 1 (selective, stochastic)
    or the class count (original); with deep supervision a dict
    ``{"input": heatmaps, layer name: relevance (B, K, 1, h, w)}``. Heatmaps stay in
    the autograd graph in training mode, so a loss on them trains the network.

    Parameters
    ----------
    model
        The classifier (any network LRP-Flex explains); kept unchanged as ``net.model``.
    variant
        ``standard | original | selective | stochastic``.
    epsilon, zb, bounds
        LRP-Flex options (see :class:`isnet.LRPFlex`).
    selective_eps
        ``e_s`` of the selective quantity.
    selective_class
        Class whose ``eta`` the selective variant explains: ``"lowest"`` logit (the
        reference implementation's choice), the ``"label"``, or the ``"highest"`` logit.
    deep_supervision
        False, True (default layers for ResNet/DenseNet/VGG), or module names.
    """

    def __init__(self, model: nn.Module, variant: str = "selective", *, epsilon: float = 0.01, zb: bool = True,
                 bounds: Bounds = (0.0, 1.0), selective_eps: float = 0.01, selective_class: str = "lowest",
                 deep_supervision: bool | Sequence[str] = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if selective_class not in SELECTIVE_CLASSES:
            raise ValueError(f"selective_class must be one of {SELECTIVE_CLASSES}, got {selective_class!r}")
        if deep_supervision is True:
            layers = default_supervised_layers(model)
        else:
            layers = list(deep_supervision or [])
        self.model = model
        self.variant, self.selective_eps, self.selective_class = variant, selective_eps, selective_class
        self.layers = layers
        self.lrp = LRPFlex(model, epsilon=epsilon, zb=zb, bounds=bounds, layers=layers, check_finite=False)

    def forward(self, x: Tensor, heatmaps: bool = False, labels: Tensor | None = None):
        if not heatmaps:
            return self.model(x)
        trace = self.lrp.trace(x)
        heat = self.explain_trace(trace, labels)
        # the trace records a graph even under torch.no_grad(); the caller gets none then
        return (trace.output if torch.is_grad_enabled() else trace.output.detach()), heat

    def explain_trace(self, trace: Trace, labels: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """The variant's heatmaps for a traced forward pass."""
        logits = trace.output
        create_graph = self.training and torch.is_grad_enabled()
        if self.variant == "original":
            parts = trace.class_relevances(create_graph=create_graph)
        else:
            with torch.enable_grad():
                quantity = self.quantity(logits, labels)
            parts = [trace.relevance(quantity, create_graph=create_graph)]
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

    def quantity(self, logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """The scalar explained by selective, stochastic and standard (batch sum)."""
        if self.variant == "stochastic":
            return select_logits(logits, stochastic_classes(logits)).sum()
        if self.variant == "standard":
            return select_logits(logits, "argmax").sum()
        if self.selective_class == "label":
            if labels is None:
                raise ValueError("selective_class='label' needs labels: net(x, heatmaps=True, labels=y)")
            classes = labels
        elif self.selective_class == "highest":
            classes = logits.detach().argmax(1)
        else:
            classes = logits.detach().argmin(1)
        return selective_quantity(logits, classes, self.selective_eps)
