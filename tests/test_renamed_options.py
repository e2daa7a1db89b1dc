"""The training objective's earlier name ``variant``: still read from the command line, files and old runs."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

import isnet.objectives.segmented
import isnet.training
from isnet.checkpoints import classifier_input, load_classifier
from isnet.cli import main
from isnet.config import BOOKKEEPING, TrainConfig, current_names
from isnet.errors import IsnetDeprecationWarning, UserError
from isnet.models import build_model
from isnet.objectives import get_objective
from isnet.paths import CONFIG, MODEL, check_run_folder, read_run_config
from isnet.training.resume import resume_config


@pytest.fixture
def seen(monkeypatch) -> dict:
    """The options ``isnet train`` passes on (training replaced by a stand-in)."""
    received: dict = {}
    monkeypatch.setattr(isnet.training, "fit", lambda config: received.update(config) or config["out"])
    return received


def _old_run(folder, objective: str = "masked") -> dict:
    """A run folder as an isnet before the renaming wrote it: config.json with ``variant``, and model.pt."""
    folder.mkdir()
    config = {"arch": "small_cnn", "num_classes": 3, "image_size": 16, "variant": objective, "train": "t",
              "epochs": 2, "epsilon": 0.01, "zb": True, "classes": ["a", "b", "c"]}
    (folder / CONFIG).write_text(json.dumps(config))
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, image_size=16)
    torch.save(model.state_dict(), folder / MODEL)
    return config


def test_the_variant_flag_is_the_objective_with_one_warning(seen, capsys):
    assert main(["train", "--train", "t", "--out", "o", "--variant", "dual", "--variant", "rrr"]) == 0
    assert seen == {"train": "t", "out": "o", "objective": "rrr"}  # the last one given, as for any option
    err = capsys.readouterr().err
    assert err.count("--variant is deprecated; use --objective") == 1
    seen.clear()
    assert main(["train", "--train", "t", "--out", "o", "--objective", "dual"]) == 0
    assert seen["objective"] == "dual" and "deprecated" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--variant" not in capsys.readouterr().out  # hidden from the help


def test_a_config_file_with_variant_is_read_as_objective(tmp_path, seen, capsys):
    (tmp_path / "old.yaml").write_text("train: t\nout: o\nvariant: stochastic\n")
    assert main(["train", "--config", str(tmp_path / "old.yaml")]) == 0
    assert seen == {"train": "t", "out": "o", "objective": "stochastic"}
    assert "variant is deprecated; use objective" in capsys.readouterr().err
    seen.clear()
    (tmp_path / "both.yaml").write_text("train: t\nout: o\nvariant: stochastic\nobjective: dual\n")
    assert main(["train", "--config", str(tmp_path / "both.yaml")]) == 2
    assert "give objective only" in capsys.readouterr().err and not seen


def test_current_names_renames_and_warns_only_for_what_a_user_wrote():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert current_names({"variant": "dual", "P": 0.7}) == {"objective": "dual", "P": 0.7}  # a run's record
        assert current_names({"objective": "dual"}, source="x") == {"objective": "dual"}
    with pytest.warns(IsnetDeprecationWarning, match="variant is deprecated; use objective"):
        assert TrainConfig.from_dict({"variant": "dual"}).objective == "dual"
    with pytest.warns(IsnetDeprecationWarning):
        assert current_names({"variant": "dual", "objective": "dual"}, source="x") == {"objective": "dual"}
    with pytest.raises(UserError, match="disagree"):
        current_names({"variant": "dual", "objective": "rrr"})


def test_the_bench_set_option_reads_variant_as_objective_which_the_benchmark_sets_itself():
    from isnet.bench.digits.presets import QUICK, BiasBenchConfig
    from isnet.bench.presets import bench_config

    with pytest.warns(IsnetDeprecationWarning, match="--set: variant is deprecated"):
        cfg = bench_config(BiasBenchConfig, QUICK, {}, ["variant=dual"])
    assert cfg.train_options == {"objective": "dual"}
    with pytest.raises(ValueError, match="cannot set \\['objective'\\]"):
        cfg.validate()


def test_an_old_run_folder_loads_evaluates_and_resumes(tmp_path):
    run = tmp_path / "old"
    old = _old_run(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run's own record is read without a warning
        model, config = load_classifier(run)
    assert config["objective"] == "masked" and "variant" not in config
    assert read_run_config(run / CONFIG) == current_names(old)
    x, masks = torch.rand(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    masks[..., 4:12, 4:12] = 1
    assert torch.equal(classifier_input(x, masks, config), x * masks)  # the masked objective, as recorded
    (run / MODEL).unlink()  # an unfinished run: resumed with its recipe
    saved, last = resume_config({"out": str(run), "resume": True, "epochs": 3}, run)
    assert (saved.objective, saved.epochs, last) == ("masked", 3, None)
    with pytest.raises(UserError, match="--objective dual \\(the run has masked\\)"):
        resume_config({"out": str(run), "resume": True, "objective": "dual"}, run)
    with pytest.raises(UserError, match="unfinished"):  # still known as a run: never mistaken for a user's files
        check_run_folder(run, overwrite=False)
    assert check_run_folder(run, overwrite=True) == [CONFIG]


def test_an_old_checkpoint_loads_with_its_variant(tmp_path):
    """A .ckpt whose hyper-parameters record ``variant`` (isnet train before the renaming)."""
    torch.manual_seed(1)
    model = build_model("small_cnn", 2, image_size=16)
    config = {"arch": "small_cnn", "num_classes": 2, "image_size": 16, "variant": "selective", "classes": ["a", "b"]}
    state = {f"net.model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state, "epoch": 0}, tmp_path / "old.ckpt")
    loaded, recorded = load_classifier(tmp_path / "old.ckpt")
    assert recorded["objective"] == "selective" and "variant" not in recorded
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(loaded(x), model.eval()(x))
    assert classifier_input(x, None, recorded) is x  # the selective ISNet classifies the images as they are


def test_segment_then_classify_masks_once_for_training_and_checkpoints(monkeypatch):
    """Training and a loaded run mask with the same rule: the run's segmenter's predicted masks."""
    calls = []

    def predicted(run, images):
        calls.append(run)
        keep = torch.zeros(len(images), 1, *images.shape[-2:])
        keep[..., 2:6, 1:7] = 1
        return keep

    monkeypatch.setattr(isnet.objectives.segmented, "predicted_masks", predicted)
    x, true_masks = torch.rand(2, 3, 8, 8), torch.ones(2, 1, 8, 8)
    expected = torch.zeros_like(x)
    expected[..., 2:6, 1:7] = x[..., 2:6, 1:7]
    objective = get_objective("seg-classify")
    config = TrainConfig(objective="seg-classify", segmenter="runs/seg")
    assert torch.equal(objective.classifier_input(x, true_masks, config), expected)
    assert torch.equal(classifier_input(x, None, config.to_dict()), expected)
    assert calls == ["runs/seg", "runs/seg"]
    with pytest.raises(UserError, match="--segmenter"):
        objective.classifier_input(x, None, TrainConfig(objective="seg-classify"))


def test_settings_keys_of_stored_benchmark_runs_survive_the_renaming():
    """The key of these options as isnet computed it while the option was called ``variant``."""
    from isnet.bench.grid import settings_key

    options = {"train": "/nonexistent-isnet/t", "val": "/nonexistent-isnet/v", "objective": "masked", "seed": 2,
               "P": 0.9}
    # the key's recipe, written out with the option under its earlier name
    record = {("variant" if k == "objective" else k): v for k, v in TrainConfig.from_dict(options).to_dict().items()
              if k not in BOOKKEEPING and not (v is None and TrainConfig().to_dict()[k] is None)}
    record["train"], record["val"] = str(Path("/nonexistent-isnet/t").resolve()), str(Path("/nonexistent-isnet/v").resolve())
    record["test"] = {"n": 10}
    earlier = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert "variant" in record and "objective" not in record
    assert settings_key(options, {"n": 10}) == earlier
    assert settings_key({**options, "objective": "dual"}, {"n": 10}) != earlier
