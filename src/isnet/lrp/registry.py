"""Which rule applies to which operation: :class:`Rules`, a table that is data, not code.

Keys are functions as PyTorch dispatches them (``F.gelu``, ``torch.mul``, ``Tensor.relu``:
what the model's code calls, also through modules such as ``nn.GELU``) or module types (a
user's activation or gating block: the rule of the nearest registered class in the module's
method resolution order applies to the whole module). Values are rules
(:data:`~isnet.lrp.core.Rule`). A :class:`Rules` object never changes after it is built, so
explainers and threads can share it; :meth:`Rules.extended` returns a new table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Union

from torch import nn

from .core import Rule

Key = Union[Callable, type[nn.Module]]


def _describe(key: object) -> str:
    return getattr(key, "__qualname__", None) or repr(key)


class Rules(Mapping):
    """An immutable table of LRP rules for functions and module types.

    Parameters
    ----------
    entries
        ``{function or nn.Module subclass: rule}``. A rule is a callable taking a
        :class:`~isnet.lrp.core.Call`; :class:`~isnet.lrp.rules.generic.Identity` and
        :class:`~isnet.lrp.rules.generic.ExplainAs` cover most user modules.

    Raises
    ------
    TypeError
        A key is a module instance or not callable, or a rule is not callable.
    """

    def __init__(self, entries: Mapping[Key, Rule] | None = None) -> None:
        table = dict(entries or {})
        for key, rule in table.items():
            if isinstance(key, nn.Module):
                raise TypeError(f"Rules keys are module types, not modules: register type({key.__class__.__name__}) "
                                f"instead of the instance, e.g. Rules({{{key.__class__.__name__}: rule}})")
            if not callable(key):
                raise TypeError(f"Rules key {key!r} is neither a function nor an nn.Module subclass")
            if not callable(rule):
                raise TypeError(f"the rule for {_describe(key)} is {rule!r}, not a callable taking a Call; use e.g. "
                                "isnet.lrp.Identity() or isnet.lrp.ExplainAs(fn)")
        self._functions = MappingProxyType({k: r for k, r in table.items()
                                            if not (isinstance(k, type) and issubclass(k, nn.Module))})
        self._modules = MappingProxyType({k: r for k, r in table.items()
                                          if isinstance(k, type) and issubclass(k, nn.Module)})

    def __getitem__(self, key: Key) -> Rule:
        table = self._modules if isinstance(key, type) and issubclass(key, nn.Module) else self._functions
        return table[key]

    def __iter__(self) -> Iterator[Key]:
        yield from self._functions
        yield from self._modules

    def __len__(self) -> int:
        return len(self._functions) + len(self._modules)

    def __repr__(self) -> str:
        return f"Rules({len(self._functions)} functions, {len(self._modules)} module types)"

    def extended(self, entries: Mapping[Key, Rule]) -> Rules:
        """A new table: these rules, with ``entries`` added (replacing the rules of the same keys)."""
        return Rules({**self, **entries})

    def function_rule(self, func: Callable) -> Rule | None:
        """The rule of a function call, or ``None`` (the call keeps its ordinary derivative)."""
        return self._functions.get(func)

    def module_rule(self, module: nn.Module) -> Rule | None:
        """The rule of the nearest registered class of ``module``, or ``None``."""
        if not self._modules:
            return None
        for cls in type(module).__mro__:
            if cls in self._modules:
                return self._modules[cls]
        return None

    def check(self, model: nn.Module) -> None:
        """Let each module's rule reject it before any forward pass (rules with a ``check`` method).

        A module inside one that has a rule is not checked: the outer rule replaces it.
        """
        covered: list[str] = []
        for name, module in model.named_modules():
            if any(name.startswith(f"{outer}.") for outer in covered):
                continue
            rule = self.module_rule(module)
            if rule is None:
                continue
            check = getattr(rule, "check", None)
            if check is not None:
                check(name, module)
            covered.append(name)
