"""Pretrained backbones: torchvision weights names read from the torch hub cache or downloaded into it
(served from a local file: the tests use no network), a new head for the data's classes, the ImageNet
normalisation folded into the first convolution, and one-channel inputs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from PIL import Image

from conftest import require
from isnet.cli import main
from isnet.errors import UserError, UserFileNotFoundError
from isnet.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from isnet.pretrained import hub_checkpoints

RESNET18_FILE = "resnet18-f37072fd.pth"  # the file name in ResNet18_Weights.IMAGENET1K_V1's URL


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A torch hub cache in a temporary TORCH_HOME holding 'ImageNet' resnet18 weights (a random state dict)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = hub_checkpoints()
    assert folder == tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, folder / RESNET18_FILE)
    return state


def _differing(model: torch.nn.Module, state: dict) -> set[str]:
    own = model.state_dict()
    return {k for k in own if k not in state or own[k].shape != state[k].shape or not torch.equal(own[k], state[k])}


def test_weights_names_read_the_hub_cache_and_a_new_head_fits_the_classes(hub):
    for name in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        model = build_model("resnet18", 3, weights=name, new_head=True, image_size=32)
        assert _differing(model, hub) == {"fc.weight", "fc.bias"}
        assert model.fc.out_features == 3
    same_classes = build_model("resnet18", 1000, weights="DEFAULT", new_head=True)
    assert _differing(same_classes, hub) == set()  # the head is kept when the class count matches
    with pytest.raises(UserError, match="another shape"):  # explaining: no head is invented
        build_model("resnet18", 3, weights="DEFAULT")
    with pytest.raises(UserError, match=r"IMAGENET1K_V1"):
        build_model("resnet18", 3, weights="IMAGENET1K_V9", new_head=True)
    with pytest.raises(UserError, match="no pretrained weights"):
        build_model("small_cnn", 3, weights="DEFAULT")


def test_a_missing_weights_file_offline_names_the_file_and_where_to_place_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ISNET_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    with pytest.raises(UserFileNotFoundError) as info:
        build_model("densenet121", 2, weights="DEFAULT", new_head=True)
    message = str(info.value)
    assert str(expected) in message and "densenet121-a639ec97.pth" in message
    assert "download.pytorch.org/models/densenet121-a639ec97.pth" in message and "downloads nothing" in message
    assert not expected.parent.exists()  # nothing was fetched or created


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Online, with an empty torch hub cache; ``serve(state, name)`` points squeezenet1_1's DEFAULT weights at a
    file:// URL of ``state`` saved as ``name`` (``{hash}`` in it: the first 8 hex digits of the file's SHA-256)."""
    from torchvision.models import SqueezeNet1_1_Weights

    monkeypatch.delenv("ISNET_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    server = tmp_path / "server"
    server.mkdir()

    def serve(state: dict, name: str = "squeezenet1_1-{hash}.pth"):
        torch.save(state, server / "upload")
        sha = hashlib.sha256((server / "upload").read_bytes()).hexdigest()
        path = (server / "upload").rename(server / name.format(hash=sha[:8]))
        monkeypatch.setattr(SqueezeNet1_1_Weights.DEFAULT.value, "url", path.as_uri())
        return path

    return serve


def _squeezenet_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return torchvision.models.squeezenet1_1(weights=None).state_dict()


def test_a_missing_weights_file_is_downloaded_into_the_hub_cache_then_read_from_it(served):
    state = _squeezenet_state(1)
    source = served(state)
    model = build_model("squeezenet1_1", 1000, weights="DEFAULT")
    assert _differing(model, state) == set()
    cached = hub_checkpoints() / source.name
    assert cached.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == [source.name]  # no partial download left
    source.unlink()  # the server is gone: the cache answers
    assert _differing(build_model("squeezenet1_1", 1000, weights="IMAGENET1K_V1"), state) == set()


def test_a_cached_file_is_read_without_a_download(served):
    cached_state = _squeezenet_state(2)
    source = served(_squeezenet_state(3))
    hub_checkpoints().mkdir(parents=True)
    torch.save(cached_state, hub_checkpoints() / source.name)
    assert _differing(build_model("squeezenet1_1", 1000, weights="DEFAULT"), cached_state) == set()


def test_failed_downloads_name_the_file_the_cache_path_and_the_url(served, monkeypatch):
    from torchvision.models import SqueezeNet1_1_Weights

    state = _squeezenet_state(4)
    cases = {"a wrong hash": served(state, "squeezenet1_1-0badc0de.pth"),
             "an unreachable URL": served(state).with_name("squeezenet1_1-12345678.pth")}
    for case, source in cases.items():
        monkeypatch.setattr(SqueezeNet1_1_Weights.DEFAULT.value, "url", source.as_uri())
        with pytest.raises(UserFileNotFoundError) as info:
            build_model("squeezenet1_1", 1000, weights="DEFAULT")
        message, cached = str(info.value), hub_checkpoints() / source.name
        assert source.name in message and str(cached) in message and source.as_uri() in message, case
        assert "--weights FILE" in message and "Traceback" not in message, case
        assert ("hash" in message) == (case == "a wrong hash"), case
        assert not cached.exists() and not list(hub_checkpoints().glob("*.partial")), case
    monkeypatch.setenv("ISNET_OFFLINE", "1")  # offline, a reachable file is not fetched either
    source = served(state)
    with pytest.raises(UserFileNotFoundError, match="ISNET_OFFLINE"):
        build_model("squeezenet1_1", 1000, weights="DEFAULT")
    assert not (hub_checkpoints() / source.name).exists()
    monkeypatch.setenv("ISNET_OFFLINE", "0")  # 0 switches it off
    assert _differing(build_model("squeezenet1_1", 1000, weights="DEFAULT"), state) == set()


def test_imagenet_normalisation_is_folded_into_the_first_convolution(hub):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(hub)
    reference.eval()
    folded = build_model("resnet18", 1000, weights="DEFAULT", normalize="imagenet").eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        want, got = reference.conv1((x - mean) / std), folded.conv1(x)
    # equal wherever the 7x7 kernel (padding 3, stride 2) does not reach the zero padding
    torch.testing.assert_close(got[..., 2:-2, 2:-2], want[..., 2:-2, 2:-2], atol=1e-5, rtol=1e-5)
    assert _differing(folded, hub) == {"conv1.weight", "conv1.bias"}
    gray = build_model("resnet18", 1000, weights="DEFAULT", normalize="imagenet", in_channels=1).eval()
    g = torch.rand(2, 1, 48, 48)
    with torch.no_grad():  # one channel = the gray image replicated to RGB, exactly
        torch.testing.assert_close(gray(g), folded(g.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-4)
    small = build_model("small_cnn", 2, image_size=16, in_channels=1)
    assert small[0].in_channels == 1 and small(torch.rand(1, 1, 16, 16)).shape == (1, 2)


def _tiny_dataset(root, n=8, size=32, mode="RGB"):
    rng = np.random.default_rng(0)
    for i in range(n):
        label = str(i % 2)
        for sub in ("images", "masks"):
            (root / sub / label).mkdir(parents=True, exist_ok=True)
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / "images" / label / f"{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[8:24, 8:24] = 255
        Image.fromarray(mask).save(root / "masks" / label / f"{i}.png")
    return root


class _StartingWeights(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.net.model.state_dict().items()}


@pytest.mark.e2e
def test_training_starts_from_the_cached_weights_and_the_run_loads_without_them(hub, tmp_path):
    from isnet.checkpoints import load_classifier
    from isnet.training import fit

    data = _tiny_dataset(tmp_path / "data")
    probe = _StartingWeights()
    run = fit({"train": str(data), "arch": "resnet18", "weights": "DEFAULT", "objective": "standard", "epochs": 1,
               "batch_size": 8, "workers": 0, "quiet": True, "out": str(tmp_path / "run")}, callbacks=[probe])
    start = probe.state
    assert set(start) == set(hub) | {"conv1.bias"}  # the folded normalisation gives conv1 a bias
    changed = {k for k in hub if start[k].shape != hub[k].shape or not torch.equal(start[k], hub[k])}
    assert changed == {"fc.weight", "fc.bias", "conv1.weight"}
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(start["conv1.weight"], hub["conv1.weight"] / std)  # normalisation folded in
    config = json.loads((run / "config.json").read_text())
    assert (config["weights"], config["normalize"], config["in_channels"]) == ("DEFAULT", "imagenet", 3)
    (hub_checkpoints() / RESNET18_FILE).unlink()  # a trained run never needs the pretrained file again
    model, loaded = load_classifier(run)
    assert model.fc.out_features == 2 and model.conv1.bias is not None and loaded["weights"] == "DEFAULT"


@pytest.mark.e2e
def test_cli_weights_errors_and_explain_with_a_weights_name(hub, tmp_path, capsys):
    data = _tiny_dataset(tmp_path / "data", n=4)
    out = tmp_path / "run"
    assert main(["train", "--train", str(data), "--arch", "resnet18", "--weights", "IMAGENET1K_V2", "--out",
                 str(out), "--quiet"]) == 2
    assert "IMAGENET1K_V1" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--train", str(data), "--arch", "densenet121", "--weights", "DEFAULT", "--out",
                 str(out), "--quiet", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "densenet121-a639ec97.pth" in err and str(hub_checkpoints()) in err and not out.exists()
    heat = tmp_path / "heat"
    assert main(["explain", "--arch", "resnet18", "--weights", "DEFAULT", "--images", str(data / "images" / "0"),
                 "--out", str(heat)]) == 0
    listed = json.loads((heat / "heatmaps.json").read_text())
    assert len(listed) == 2 and all(0 <= e["predicted"] < 1000 for e in listed)  # the 1,000 ImageNet classes


def test_small_models_and_vits_are_built_for_the_image_size():
    vit = build_model("small_vit", 4, image_size=48)
    assert vit(torch.rand(2, 3, 48, 48)).shape == (2, 4) and vit.image_size == 48
    assert build_model("small_convnext", 3, image_size=32)(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    one = build_model("small_vit", 2, image_size=32, in_channels=1)
    assert one.conv_proj.in_channels == 1 and one(torch.rand(1, 1, 32, 32)).shape == (1, 2)
    assert build_model("vit_b_32", 2, image_size=64).encoder.pos_embedding.shape[1] == 1 + (64 // 32) ** 2
    with pytest.raises(UserError, match="not a multiple of 16.*--image-size 32"):
        build_model("vit_b_16", 2, image_size=40)
    with pytest.raises(UserError, match="divisible by its patch size 4"):
        build_model("small_vit", 2, image_size=30)


def test_timm_models_by_name_with_their_errors(tmp_path):
    timm = require("timm")

    from isnet import explain
    from lrp_models import assert_same, snapshot

    vit = build_model("timm:vit_tiny_patch16_224", 3, image_size=32)
    assert vit.patch_embed.img_size == (32, 32) and vit(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    cnn = build_model("timm:resnet10t", 3, image_size=32, in_channels=1).eval()
    before = snapshot(cnn)
    heat = explain(cnn, torch.rand(2, 1, 32, 32), "argmax")
    assert heat.shape == (2, 1, 32, 32) and torch.isfinite(heat).all()
    assert_same(before, snapshot(cnn))
    # weights from a file: a 1000-class state dict, the head replaced for 3 classes
    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "r10t.pt")
    loaded = build_model("timm:resnet10t", 3, image_size=32, weights=tmp_path / "r10t.pt", new_head=True)
    assert torch.equal(loaded.conv1[0].weight, source.conv1[0].weight) and loaded.fc.out_features == 3
    with pytest.raises(UserError, match="timm has no model 'no_such_net'"):
        build_model("timm:no_such_net", 3)
    with pytest.raises(UserError, match="state-dict file.*timm.create_model"):
        build_model("timm:resnet10t", 3, weights="DEFAULT")


def test_vit_weights_for_another_size_get_resized_position_embeddings(tmp_path):
    from torchvision.models.vision_transformer import interpolate_embeddings

    torch.manual_seed(0)
    source = build_model("small_vit", 10, image_size=32)
    torch.save(source.state_dict(), tmp_path / "vit32.pt")
    bigger = build_model("small_vit", 3, image_size=48, weights=tmp_path / "vit32.pt", new_head=True)
    expected = interpolate_embeddings(48, 4, source.state_dict())["encoder.pos_embedding"]
    assert bigger.encoder.pos_embedding.shape == (1, 1 + 12 * 12, 64)
    assert torch.equal(bigger.encoder.pos_embedding, expected)
    assert torch.equal(bigger.conv_proj.weight, source.conv_proj.weight)
    assert bigger(torch.rand(1, 3, 48, 48)).shape == (1, 3)
