"""Tests for isnet.training (Lightning module, data module, fit, resume, calibration), isnet.checkpoints
and isnet.evaluate."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from isnet.data import generate, to_tensors, write_dataset
from isnet.evaluate import evaluate
from isnet.checkpoints import load_classifier
from isnet.config import TrainConfig
from isnet.errors import UserError
from isnet.training import ISNetModule, MaskedDataModule, TrainingDiverged, fit
from isnet.training.module import at_chance

BASE = dict(arch="small_cnn", epochs=1, batch_size=32, workers=0, quiet=True, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """64 training, 32 validation and 32 images per test split of BG-Digits (32x32)."""
    return write_dataset(tmp_path_factory.mktemp("bgd") / "bg", seed=0, n_train=64, n_val=32, n_test=32)


def _config(data, out, **kw):
    return {**BASE, "train": str(data["train"]), "val": str(data["val"]), "out": str(out), **kw}


def _state(path):
    return torch.load(path, weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------- the training step


@pytest.mark.parametrize("objective", ["standard", "original", "selective", "stochastic"])
def test_training_step_decreases_loss_on_a_fixed_batch(objective):
    torch.manual_seed(0)
    x, masks, labels = to_tensors(generate(8, split="train", seed=1))
    config = TrainConfig(train="unused", objective=objective, num_classes=10, image_size=32, C1=1.0, C2=25.0,
                         optimizer="adam", lr=3e-3, schedule="none").to_dict()
    module = ISNetModule.from_config(config)
    module.train()
    optimizer = module.configure_optimizers()

    def loss(step: bool) -> float:
        torch.manual_seed(123)  # the stochastic objective draws the same classes every time
        out = module.objective_step(x, masks, labels)
        if step:
            optimizer.zero_grad()
            (out.loss if out.backward is None else out.backward).backward()  # the gradient rule's surrogate
            optimizer.step()
        gradient_terms = {"grad_ce", "grad_heatmap", "grad_cos", "grad_scale"}  # guard, the default, logs them
        assert set(out.terms) == ({"ce"} if objective == "standard" else {"ce", "heatmap", *gradient_terms})
        if objective != "standard":
            k = 10 if objective == "original" else 1
            assert out.heatmaps.shape == (8, k, 3, 32, 32) and not out.heatmaps.requires_grad
        return out.loss.item()

    before = loss(False)
    for _ in range(3):
        loss(True)
    after = loss(False)
    assert math.isfinite(before) and after < before


def test_p_warmup_and_option_checks():
    config = TrainConfig(train="x", num_classes=10, image_size=32, C1=1.0, C2=25.0, p_warmup=2).to_dict()
    module = ISNetModule.from_config(config)
    assert module.criterion.weight(module.warmup()) == TrainConfig().P  # no trainer attached: the target value
    with pytest.raises(ValueError, match="needs C1 and C2"):
        ISNetModule.from_config(TrainConfig(train="x", num_classes=10, image_size=32, B=1.0).to_dict())
    ISNetModule.from_config(TrainConfig(train="x", num_classes=10, image_size=32, B=0.0).to_dict())  # unused
    with pytest.raises(ValueError, match="unknown objective"):
        fit(TrainConfig(train="x", objective="nope").to_dict())
    with pytest.raises(ValueError, match="both --c1 and --c2"):
        TrainConfig(train="x", C1=1.0).validate()
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"lr": 0.1, "learning_rate": 0.1})


def test_data_module_uses_training_classes_and_epoch_seeded_shuffling(data):
    dm = MaskedDataModule(data["train"], data["val"], batch_size=8, workers=0, seed=3,
                          tests={"biased": data["test/biased"]})
    assert dm.classes == [str(i) for i in range(10)] and dm.image_size == 32
    assert dm.tests["biased"].classes == dm.classes and dm.val_has_masks

    def order(epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return list(loader.sampler)

    assert order(0) == order(0) and order(0) != order(1) and sorted(order(1)) == list(range(64))


def test_acquisition_reaches_the_training_images_only(data, tmp_path, monkeypatch):
    import importlib

    from isnet.data.acquisition import AcquisitionJitter

    fit_module = importlib.import_module("isnet.training.fit")  # the module, not the function of that name

    dm = MaskedDataModule(data["train"], data["val"], workers=0, acquisition=0.5)
    [jitter] = [t for t in dm.train_set.transform.transforms if isinstance(t, AcquisitionJitter)]
    assert jitter.strength == 0.5
    assert not any(isinstance(t, AcquisitionJitter) for t in dm.val_set.transform.transforms)
    seen = {}

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(fit_module, "MaskedDataModule", spy)
    with pytest.raises(Stop):
        fit(_config(data, tmp_path / "run", objective="standard", acquisition=0.5))
    assert seen["acquisition"] == 0.5


# ---------------------------------------------------------------------------- fit: outputs, calibration


@pytest.fixture(scope="module")
def calibrated_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "selective"
    fit(_config(data, out, objective="selective", calibrate_epochs=1))
    return out


@pytest.mark.e2e
def test_fit_calibrates_and_writes_the_run_folder(calibrated_run):
    run = calibrated_run
    config = json.loads((run / "config.json").read_text())
    assert 0 < config["C1"] < config["C2"]
    assert config["calibration"]["n"] == 64 and config["calibration"]["C1"] == config["C1"]
    assert config["classes"] == [str(i) for i in range(10)] and config["num_classes"] == 10
    assert config["image_size"] == 32 and config["arch"] == "small_cnn"
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "metrics.csv", "model.pt",
                 "calibration/metrics.csv"):
        assert (run / name).is_file(), name
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("train/loss_epoch", "train/ce_epoch", "train/heatmap_epoch", "train/acc_epoch",
                   "train/bg_share_epoch", "val/acc", "val/ce", "val/bg_share"):
        assert column in header, column

    model, loaded = load_classifier(run)
    assert not model.training and loaded["C1"] == config["C1"]
    _assert_same_weights(model.state_dict(), _state(run / "model.pt"))
    from_ckpt, _ = load_classifier(run / "checkpoints" / "last.ckpt")  # 1 epoch: last = final weights
    _assert_same_weights(from_ckpt.state_dict(), model.state_dict())

    with pytest.raises(FileExistsError, match="already holds a run"):
        fit({**loaded, "resume": False})


@pytest.mark.e2e
def test_evaluate_matches_a_manual_computation(calibrated_run, data):
    tests = {"biased": data["test/biased"], "deceiving": data["test/deceiving"]}
    results = evaluate(calibrated_run, tests, batch_size=16)
    assert set(results) == {"biased", "deceiving"}
    model, config = load_classifier(calibrated_run)
    from isnet.data import MaskedImageFolder, make_transform

    for name, root in tests.items():
        r = results[name]
        assert {"accuracy", "macro_f1", "auroc", "background_relevance", "confusion_matrix", "n"} <= set(r)
        ds = MaskedImageFolder(root, transform=make_transform(32, train=False), classes=config["classes"])
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        y = torch.tensor([ds[i][2] for i in range(len(ds))])
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        assert r["n"] == 32 and r["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert 0.0 <= r["background_relevance"] <= 1.0
        assert sum(map(sum, r["confusion_matrix"])) == 32


# ---------------------------------------------------------------------------- resume, faults, precision


class _Crash(Callback):
    """Raises in the middle of an epoch, like a killed process (nothing is saved on the way out)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyError("simulated crash")


@pytest.mark.e2e
def test_resume_ends_where_an_uninterrupted_run_ends(data, tmp_path):
    # stochastic: the explained class is random, and flips run in 2 worker processes, so this also
    # checks the RNG streams and the shuffling of a resumed epoch
    # (a constant learning rate: raising --epochs on resume stretches a cosine schedule by design)
    kw = dict(objective="stochastic", C1=1.0, C2=25.0, epochs=2, deterministic=True, workers=2, hflip=True,
              schedule="none", warm_start=False)
    fit(_config(data, tmp_path / "full", **kw))
    reference = _state(tmp_path / "full" / "model.pt")

    # stopped after epoch 1, then continued to 2 (--epochs raised on resume)
    fit(_config(data, tmp_path / "stopped", **{**kw, "epochs": 1}))
    torch.manual_seed(999)
    fit({"out": str(tmp_path / "stopped"), "resume": True, "epochs": 2, "quiet": True})
    _assert_same_weights(_state(tmp_path / "stopped" / "model.pt"), reference)

    # killed in the middle of epoch 2: resume repeats epoch 2 from last.ckpt (end of epoch 1).
    # (A real SIGKILL of `isnet train` mid-epoch was checked by hand with the same result.)
    with pytest.raises(KeyError, match="simulated crash"):
        fit(_config(data, tmp_path / "killed", **kw), callbacks=[_Crash(epoch=1, batch=1)])
    assert not (tmp_path / "killed" / "model.pt").exists()
    torch.manual_seed(4321)
    fit({"out": str(tmp_path / "killed"), "resume": True, "quiet": True})
    _assert_same_weights(_state(tmp_path / "killed" / "model.pt"), reference)
    epochs = [line.split(",")[0] for line in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]]
    assert set(epochs) == {"0", "1"}


@pytest.mark.e2e
def test_a_resumed_warm_start_run_keeps_its_first_phase(data, tmp_path, caplog):
    """Resume continues the main training: the first phase is not trained again and its record is kept."""
    import logging

    kw = dict(objective="selective", calibrate_epochs=1, epochs=3, warm_start=True, schedule="none")
    fit(_config(data, tmp_path / "full", **kw))
    with pytest.raises(KeyError, match="simulated crash"):
        fit(_config(data, tmp_path / "killed", **kw), callbacks=[_Crash(epoch=1, batch=1)])
    first = (tmp_path / "killed" / "calibration" / "metrics.csv").read_text()
    saved = json.loads((tmp_path / "killed" / "config.json").read_text())["calibration"]
    with caplog.at_level(logging.INFO, logger="isnet.training"):
        fit({"out": str(tmp_path / "killed"), "resume": True, "epochs": 3, "quiet": True})
    assert "a standard classifier trains" not in caplog.text and "resuming" in caplog.text
    assert (tmp_path / "killed" / "calibration" / "metrics.csv").read_text() == first
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["calibration"] == saved
    _assert_same_weights(_state(tmp_path / "killed" / "model.pt"), _state(tmp_path / "full" / "model.pt"))


class _Poison(Callback):
    """Makes the network produce infinities from the start of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.net.model.parameters()).fill_(float("inf"))


@pytest.mark.e2e
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(data, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"diverged.*epoch 1, batch 0.*last good checkpoint"):
        fit(_config(data, out, objective="selective", C1=1.0, C2=25.0, epochs=3, warm_start=False),
            callbacks=[_Poison(epoch=1)])
    assert not (out / "model.pt").exists()
    model, config = load_classifier(out / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.e2e
def test_bf16_mixed_precision_run_has_finite_losses(data, tmp_path):
    out = tmp_path / "bf16"
    fit(_config(data, out, objective="selective", C1=1.0, C2=25.0, precision="bf16-mixed", accelerator="cpu",
                p_warmup=2, warm_start=False))
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, r.split(","))) for r in rows[1:]]
    losses = [float(v["train/loss_epoch"]) for v in values if v["train/loss_epoch"]]
    heat = [float(v["train/heatmap_epoch"]) for v in values if v["train/heatmap_epoch"]]
    assert losses and heat and all(math.isfinite(v) for v in losses + heat)
    # P warms up per step over 2 epochs of 2 steps: P * 1/4 and P * 2/4 in the first epoch
    p_mean = [float(v["train/P_epoch"]) for v in values if v["train/P_epoch"]]
    assert p_mean == [pytest.approx(TrainConfig().P * 1.5 / 4)]
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16-mixed"
    model, _ = load_classifier(out)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_standard_with_background_swap_reads_the_training_masks(data, tmp_path):
    """The swap needs masks even for an objective that does not (otherwise it swaps nothing)."""
    from isnet.training import MaskedDataModule

    seen = {}

    class Spy(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("masks", batch[1])

    fit(_config(data, tmp_path / "run", objective="standard", background_swap=1.0), callbacks=[Spy()])
    assert not seen["masks"].bool().all(), "the training masks were replaced by all-ones masks"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["background_swap"] == 1.0
    assert MaskedDataModule(data["train"], train_masks=False).train_set.has_masks is False


@pytest.mark.e2e
def test_dual_calibrates_each_rule_and_keeps_given_bounds(data, tmp_path):
    """The Dual ISNet's z+ maps get their own C1/C2; bounds given on the command line are kept."""
    fit(_config(data, tmp_path / "dual", objective="dual", calibrate_epochs=1, C1=2.0, C2=30.0))
    config = json.loads((tmp_path / "dual" / "config.json").read_text())
    calibration = config["calibration"]
    assert (config["C1"], config["C2"]) == (2.0, 30.0)
    assert config["C1_zplus"] == calibration["C1_zplus"] and config["C2_zplus"] == calibration["C2_zplus"]
    assert calibration["n_zplus"] == 64 and "C1" not in calibration  # only what was calibrated is recorded
    mean, std = calibration["mean_zplus"], calibration["std_zplus"]
    assert calibration["C1_zplus"] == pytest.approx(max(mean / 5, mean - 3 * std))
    with pytest.raises(ValueError, match="needs C1 and C2, C1_zplus and C2_zplus"):
        ISNetModule.from_config(TrainConfig(train="x", objective="dual", num_classes=10, image_size=32, C1=1.0, C2=2.0,
                                                 B=1.0))
    with pytest.raises(UserError, match="both --c1-zplus and --c2-zplus"):
        TrainConfig(train="x", C1_zplus=1.0).validate()


def test_dual_calibration_takes_each_group_from_its_own_columns():
    """Totals (N, K=2) gathered over two ranks: C1/C2 from column 0 (LRP-epsilon), C1_zplus/C2_zplus from column 1."""
    from isnet import calibrate

    module = ISNetModule.from_config(TrainConfig(train="x", objective="dual", num_classes=10, image_size=32),
                                     calibrate=True)
    eps, zplus = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 30.0, 50.0, 70.0])
    local = torch.stack([eps, zplus], 1)  # (N, 2) on this rank
    module.all_gather = lambda t: torch.stack([t, t + 1.0])  # (ranks, N, 2)
    module.log = lambda *args, **kwargs: None
    module._recording, module._totals = True, [local[:2], local[2:]]
    module.on_train_epoch_end()
    got = module.calibration
    assert (got["C1"], got["C2"]) == pytest.approx(calibrate(torch.cat([eps, eps + 1])))
    assert (got["C1_zplus"], got["C2_zplus"]) == pytest.approx(calibrate(torch.cat([zplus, zplus + 1])))
    assert got["n"] == got["n_zplus"] == 8


def test_calibration_trains_with_its_own_swap(data, tmp_path):
    """C1/C2 come from a standard classifier trained with calibration_swap, whatever the run's swap."""
    module = ISNetModule.from_config(TrainConfig(train="x", objective="selective", num_classes=10, image_size=32,
                                                 background_swap=0.0, calibration_swap=1.0), calibrate=True)
    assert module.background_swap == 1.0 and module.objective.name == "standard"
    module = ISNetModule.from_config(TrainConfig(train="x", objective="selective", num_classes=10, image_size=32,
                                                 background_swap=1.0, calibration_swap=0.0), calibrate=True)
    assert module.background_swap == 0.0


def test_an_option_of_another_objective_is_named_as_unused(data, tmp_path, caplog):
    from isnet.objectives import foreign_options, get_objective

    assert foreign_options(get_objective("selective"), ["rrr_lambda", "P", "lr"]) == ["rrr_lambda"]
    assert foreign_options(get_objective("rrr"), ["rrr_lambda", "P", "batch_stats"]) == ["P", "batch_stats"]
    with caplog.at_level("WARNING", logger="isnet.training"):
        fit(_config(data, tmp_path / "run", objective="standard", gradcam_weight=3.0))
    assert "--gradcam-weight is not used by --objective standard" in caplog.text


def test_a_heatmap_loss_run_with_a_weak_swap_is_warned_that_its_heatmaps_can_hide_a_shortcut(data, tmp_path, caplog):
    def warned(**options) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="isnet.training"):
            fit(_config(data, tmp_path / f"run{len(list(tmp_path.iterdir()))}", epochs=1, C1=0.5, C2=7.0,
                        warm_start=False, **options))
        return [r.getMessage() for r in caplog.records if "heatmaps hide it" in r.getMessage()]

    message, = warned(objective="selective", background_swap=0.25)
    assert "--objective selective with --background-swap 0.25" in message
    assert warned(objective="selective", background_swap=0.5) == []
    assert warned(objective="swap", background_swap=0.0) == []  # no heatmap loss


@pytest.mark.e2e
def test_a_calibration_network_at_chance_trains_on_until_half_the_epochs_then_is_named(data, tmp_path, caplog,
                                                                                        monkeypatch):
    """A calibration network at chance (here: every accuracy counts as chance) trains one epoch at a time past
    --calibrate-epochs, up to half of --epochs, and is then warned about."""
    for name in ("isnet.training.module", "isnet.training.fit"):  # (isnet.training.fit is also a function's name)
        monkeypatch.setattr(importlib.import_module(name), "at_chance", lambda accuracy, k: True)
    with caplog.at_level("WARNING", logger="isnet.training"):
        fit(_config(data, tmp_path / "run", objective="selective", calibrate_epochs=1, epochs=4))
    warned = [r.getMessage() for r in caplog.records if "still at chance after 2 epoch(s)" in r.getMessage()]
    assert len(warned) == 1 and "--lr" in warned[0]
    assert "the ISNet starts from and is calibrated on a network that has not learnt" in warned[0]
    calibration = json.loads((tmp_path / "run" / "config.json").read_text())["calibration"]
    assert calibration["epochs"] == 2
    rows = (tmp_path / "run" / "calibration" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    epochs = {row.split(",")[header.index("epoch")] for row in rows[1:]}
    assert epochs == {"0", "1"}


@pytest.mark.e2e
def test_a_calibration_network_that_has_learnt_stops_at_calibrate_epochs(data, tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("isnet.training.module"), "at_chance", lambda accuracy, k: False)
    fit(_config(data, tmp_path / "run", objective="selective", calibrate_epochs=1, epochs=4))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["calibration"]["epochs"] == 1


def test_at_chance_is_a_quarter_above_chance():
    assert at_chance(0.124, 10) and not at_chance(0.125, 10)
    assert at_chance(0.41, 3) and not at_chance(0.42, 3)


class _StartWeights(Callback):
    def on_fit_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.net.model.state_dict().items()}


@pytest.mark.e2e
def test_warm_start_continues_from_the_calibration_network_within_the_epoch_budget(data, tmp_path):
    start = _StartWeights()
    run = fit(_config(data, tmp_path / "warm", objective="selective", calibrate_epochs=1, epochs=3, warm_start=True),
              callbacks=[start])
    _assert_same_weights(start.state, _state(run / "calibration" / "model.pt"))
    config = json.loads((run / "config.json").read_text())
    assert config["calibration"]["epochs"] == 1
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {row.split(",")[header.index("epoch")] for row in rows[1:]} == {"0", "1"}  # 3 epochs less 1 calibrating
    cold = _StartWeights()
    fit(_config(data, tmp_path / "cold", objective="selective", calibrate_epochs=1, epochs=3, warm_start=False,
                B=0.0), callbacks=[cold])
    # B 0 uses no C1/C2: without a warm start there is no first phase to run
    assert not (tmp_path / "cold" / "calibration").exists()
    assert json.loads((tmp_path / "cold" / "config.json").read_text())["calibration"] is None
    assert any(not torch.equal(start.state[k], cold.state[k]) for k in start.state)


@pytest.mark.e2e
def test_given_bounds_keep_the_warm_start(data, tmp_path):
    """--c1/--c2 given: the standard first phase still runs for the warm start, and the given bounds are kept.
    Two epochs with two calibration epochs: the first phase trains one, so the run sees two epochs of data."""
    start = _StartWeights()
    run = fit(_config(data, tmp_path / "given", objective="selective", calibrate_epochs=2, epochs=2, warm_start=True,
                      B=1.0, C1=2.0, C2=30.0), callbacks=[start])
    _assert_same_weights(start.state, _state(run / "calibration" / "model.pt"))
    config = json.loads((run / "config.json").read_text())
    assert (config["C1"], config["C2"]) == (2.0, 30.0) and config["calibration"]["epochs"] == 1
    assert config["calibrate_epochs"] == 2  # the option as given; the first phase took what the budget leaves
    rows = (run / "metrics.csv").read_text().splitlines()
    assert {row.split(",")[rows[0].split(",").index("epoch")] for row in rows[1:]} == {"0"}


def test_the_first_phase_leaves_the_main_training_one_epoch():
    assert [TrainConfig(epochs=e, calibrate_epochs=2).first_phase_epochs() for e in (1, 2, 3, 30)] == [1, 1, 2, 2]
    assert TrainConfig(epochs=2, calibrate_epochs=5, warm_start=False).first_phase_epochs() == 5  # not counted
