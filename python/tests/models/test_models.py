"""Model building by name, head replacement, weights (none / imagenet offline / PATH),
--freeze-backbone, and one train step + prediction for the architectures the originals used."""

import pytest
import torch
from torch import nn

from medclf.core.errors import MedclfError
from medclf.engine.steps import predict, probabilities_from_logits, train_one_epoch
from medclf.models import architectures as models

SEED_ARCHITECTURES = ["resnet18", "vgg11_bn", "densenet121", "resnet50", "resnext50_32x4d", "densenet161",
                      "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b2"]


def random_batches(n_batches=1, batch=4, size=64, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.arange(batch) % n_classes)
            for _ in range(n_batches)]


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_seed_architectures_build_train_one_step_and_predict_at_64px(name):
    torch.manual_seed(0)
    model, info = models.build_model(name, 3, "none")
    assert info["architecture"] == name and info["mean"] is None
    head = models.head_module(model)
    before = head.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, random_batches())
    assert metrics["loss"] > 0
    assert not torch.equal(before, head.weight)
    logits, labels = predict(model, random_batches(seed=1))
    assert logits.shape == (4, 3) and labels.tolist() == [0, 1, 2, 0]
    assert torch.allclose(probabilities_from_logits(logits).sum(1), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("name,expected", [("vgg", "vgg11_bn"), ("densenet", "densenet121"), ("resnet18", "resnet18")])
def test_seed_aliases(name, expected):
    assert models.canonical_name(name) == expected


@pytest.mark.parametrize("name", ["squeezenet1_0", "mnasnet0_5", "convnext_tiny", "shufflenet_v2_x0_5",
                                  "regnet_y_400mf", "googlenet", "vit_b_16"])
def test_heads_are_replaced_wherever_the_architecture_keeps_them(name):
    model, _ = models.build_model(name, 5, "none")
    model.eval()
    size = 224 if name == "vit_b_16" else 64
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 5)


def test_single_logit_head_shape():
    model, _ = models.build_model("resnet18", 1, "none")
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(MedclfError, match="resnet18"):
        models.build_model("resnet19", 2)


@pytest.mark.parametrize("typo, suggestion", [("densenet12", "densenet121"), ("resnt18", "resnet18"),
                                                ("efficientnet-b0", "efficientnet_b0"), ("VGG", "vgg")])
def test_a_mistyped_architecture_gets_a_did_you_mean(typo, suggestion):
    with pytest.raises(MedclfError, match=rf"--arch {typo}: not a torchvision classification model; did you mean "
                                          rf"[^;]*\b{suggestion}\b"):
        models.canonical_name(typo)


def test_weights_values_are_checked_without_loading(tmp_path):
    models.check_weights("none", "resnet18")
    models.check_weights("imagenet", "densenet")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not read by the check")
    models.check_weights(str(weights), "resnet18")
    with pytest.raises(MedclfError, match=r"--weights nnone: neither none, imagenet nor an existing file; "
                                          r"did you mean none\?"):
        models.check_weights("nnone", "resnet18")
    with pytest.raises(MedclfError, match=r"--weights imagnet: .*did you mean imagenet\?"):
        models.check_weights("imagnet", "resnet18")


def test_imagenet_weights_offline_fail_at_once_naming_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "urlopen", offline)  # offline even on a machine with a network
    with pytest.raises(MedclfError) as err:
        models.build_model("resnet18", 2, "imagenet")
    message = str(err.value)
    assert "--weights none" in message and "--weights PATH" in message


def test_weights_from_a_local_state_dict_file(tmp_path):
    torch.manual_seed(1)
    source, _ = models.build_model("resnet18", 2, "none")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded, _ = models.build_model("resnet18", 2, str(tmp_path / "w.pt"))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # An ImageNet-shaped file (1000 outputs): the backbone loads, the head is new.
    imagenet_like, _ = models.build_model("resnet18", 1000, "none")
    torch.save(imagenet_like.state_dict(), tmp_path / "in.pt")
    backbone, _ = models.build_model("resnet18", 2, str(tmp_path / "in.pt"))
    assert torch.equal(backbone.conv1.weight, imagenet_like.conv1.weight)
    assert backbone.fc.out_features == 2


def test_weights_file_with_a_pickled_object_is_refused(tmp_path):
    model, _ = models.build_model("resnet18", 2, "none")
    torch.save(model, tmp_path / "whole_model.pth")  # the HAM10000 original saved whole models
    with pytest.raises(MedclfError, match="refused"):
        models.build_model("resnet18", 2, str(tmp_path / "whole_model.pth"))


def test_weights_file_of_another_architecture_is_rejected(tmp_path):
    other, _ = models.build_model("mobilenet_v2", 2, "none")
    torch.save(other.state_dict(), tmp_path / "m.pt")
    with pytest.raises(MedclfError, match="same --arch"):
        models.build_model("resnet18", 2, str(tmp_path / "m.pt"))


def _batchnorm_buffers(model):
    return {name: buf.clone() for name, buf in model.named_buffers()
            if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_freeze_backbone_keeps_batchnorm_statistics_during_an_epoch():
    torch.manual_seed(0)
    model, _ = models.build_model("resnet18", 2, "none")
    models.set_backbone_trainable(model, False)
    assert models.freeze_batchnorm_stats(model) == 20  # resnet18 has 20 BatchNorm layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    stats = _batchnorm_buffers(model)
    head_before = model.fc.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, random_batches(3, n_classes=2))
    after = _batchnorm_buffers(model)
    assert all(torch.equal(stats[k], after[k]) for k in stats)
    assert not torch.equal(head_before, model.fc.weight)
    assert model.training and not model.bn1.training


def test_without_freezing_batchnorm_statistics_do_change():
    # The control for the test above: the same epoch moves the statistics when nothing is frozen.
    torch.manual_seed(0)
    model, _ = models.build_model("resnet18", 2, "none")
    stats = _batchnorm_buffers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, random_batches(1, n_classes=2))
    assert not torch.equal(stats["bn1.running_mean"], model.bn1.running_mean)


def test_imagenet_weights_from_the_hub_cache_and_their_normalisation(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(2)
    stand_in = torchvision.models.resnet18(weights=None)  # plays the downloaded file
    cached = tmp_path / "hub" / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(stand_in.state_dict(), cached)
    model, info = models.build_model("resnet18", 2, "imagenet")
    assert torch.equal(model.conv1.weight, stand_in.conv1.weight) and model.fc.out_features == 2
    assert info["mean"] == [0.485, 0.456, 0.406] and info["std"] == [0.229, 0.224, 0.225]
