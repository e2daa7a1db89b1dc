"""One recipe in Python and on the command line: the Python API's defaults are ``isnet train``'s."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import isnet
from isnet.config import BOUND_GROUPS, TrainConfig
from isnet.objectives import get_objective, objective_names
from isnet.recipe import REFERENCE, default
from isnet.small_models import small_cnn
from isnet.training import ISNetModule
from isnet.network import selective_quantity

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
PYTHON_API = (isnet.ISNet, isnet.ISNetLoss, isnet.heatmap_loss, isnet.swap_backgrounds, selective_quantity)
CALIBRATED = {bound + group for bound in ("C1", "C2") for group in BOUND_GROUPS}


def _shared_defaults() -> list[tuple[str, str, object]]:
    """(function, parameter, default) of each defaulted parameter of the Python API named like a TrainConfig field."""
    return [(fn.__name__, name, p.default) for fn in PYTHON_API
            for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and name in FIELDS]


SHARED = _shared_defaults()


def test_the_comparison_sees_the_recipe():
    names = {name for _, name, _ in SHARED}
    assert names >= {"P", "d", "E", "A", "B", "foreground", "norm", "d_loss", "objective", "epsilon", "zb",
                     "selective_eps", "selective_class", "deep_supervision", "batch_stats", "C1", "C2"}


@pytest.mark.parametrize(("function", "name", "value"), SHARED, ids=[f"{f}-{n}" for f, n, _ in SHARED])
def test_python_default_equals_train_config_default(function, name, value):
    expected = FIELDS[name].default
    if expected is None:  # resolved when training starts: only the calibrated foreground range
        assert name in CALIBRATED
        return
    assert value == expected and type(value) is type(expected), f"{function}({name}={value!r}), TrainConfig: {expected!r}"


def test_selective_eps_and_swap_defaults_are_isnet_trains():
    assert inspect.signature(selective_quantity).parameters["eps"].default == default("selective_eps")
    swap = inspect.signature(isnet.swap_backgrounds).parameters["p"].default
    isnets = [name for name in objective_names() if get_objective(name).heatmap_loss]
    assert isnets and default("background_swap") is None  # each objective's own
    assert all(get_objective(name).swap_probability(default("background_swap")) == swap for name in isnets)


def test_reference_names_the_papers_departures():
    assert {"P", "d", "foreground", "batch_stats", "background_swap"} <= set(REFERENCE) <= set(FIELDS)
    assert all(REFERENCE[name] != default(name) for name in REFERENCE)
    TrainConfig(train="unused", **REFERENCE).validate()
    with pytest.raises(KeyError, match="no field 'nope'"):
        default("nope")


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, masks = torch.rand(6, 3, 16, 16), torch.zeros(6, 1, 16, 16)
    for i in range(6):
        top, left = torch.randint(0, 8, (2,)).tolist()
        masks[i, :, top:top + 8, left:left + 8] = 1
    return x, masks, torch.tensor([0, 1, 2, 0, 1, 2])


def test_one_python_step_equals_the_isnet_train_step():
    """ISNet + ISNetLoss + swap_backgrounds with their defaults, Adam and clipping as in the README, against
    the Lightning module that ``isnet train`` builds from TrainConfig's defaults."""
    x, masks, labels = _batch()
    # C1 between the images' foreground totals (0.59-0.81): the floor changes the step for some of them
    config = TrainConfig(train="unused", num_classes=3, image_size=16, C1=0.7, C2=0.9)
    module = ISNetModule.from_config(config).train()
    cli_model = module.net.model
    model = small_cnn(3)
    model.eval()(x[:1])  # materialise the lazy layer, then take the module's weights
    model.train().load_state_dict(cli_model.state_dict())

    cli_optimizer = module.configure_optimizers()["optimizer"]
    torch.manual_seed(1)
    cli_loss = module.training_step((x, masks, labels), 0)  # swap, heatmaps, loss (P at its full value)
    cli_loss.backward()
    torch.nn.utils.clip_grad_norm_(cli_model.parameters(), config.gradient_clip)  # as fit() has Lightning do
    cli_optimizer.step()

    net = isnet.ISNet(model, "selective")
    criterion = isnet.ISNetLoss(C1=0.7, C2=0.9)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    swapped = isnet.swap_backgrounds(x, masks)
    logits, heatmaps = net(swapped, heatmaps=True, labels=labels)
    loss = criterion(logits, labels, heatmaps, masks).combined(model.parameters()).loss  # the gradient rule
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

    assert not torch.equal(swapped, x)
    assert torch.equal(loss.detach(), cli_loss.detach())
    for (name, p), q in zip(model.named_parameters(), cli_model.parameters()):
        assert torch.equal(p.grad, q.grad), name
    after, cli_after = model.state_dict(), cli_model.state_dict()  # weights and batch-norm statistics
    assert all(torch.equal(after[key], cli_after[key]) for key in after)
