"""Build any torchvision classification model by name, with a head for the study's classes.

`build_model(name, n_outputs, weights)` accepts every name of
`torchvision.models.list_models(module=torchvision.models)` plus the seed-002 aliases
`vgg` (= vgg11_bn) and `densenet` (= densenet121). `weights` is `none`, `imagenet` (torchvision's
weight enum, DEFAULT) or a path to a state dict, loaded with `torch.load(weights_only=True)`.
"""

import difflib
from pathlib import Path

import torch
import torchvision
from torch import nn

from medclf.core.errors import MedclfError

ALIASES = {"vgg": "vgg11_bn", "densenet": "densenet121"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classification_models():
    return sorted(torchvision.models.list_models(module=torchvision.models))


def canonical_name(name):
    """The torchvision name of `name` (an alias resolved); a typo is refused with the closest names."""
    name = ALIASES.get(str(name), str(name))
    known = classification_models()
    if name not in known:
        close = difflib.get_close_matches(name.lower(), known + sorted(ALIASES), n=3, cutoff=0.6)  # names are lower case
        if close:  # the suggestions alone keep the line short
            fix = f"did you mean {' or '.join(close)}? (every name: torchvision.models.list_models())"
        else:
            fix = f"use one of {', '.join(known)} (or the aliases {', '.join(sorted(ALIASES))})"
        raise MedclfError(f"--arch {name}: not a torchvision classification model; {fix}")
    return name


WEIGHTS_CHOICES = ("none", "imagenet")


def check_weights(weights, name):
    """Refuse a --weights value that cannot load, without loading it: `none`, `imagenet` (for an
    architecture torchvision has pretrained weights for) or the path of an existing file."""
    if weights in (None, "none"):
        return
    if weights == "imagenet":
        imagenet_weights(canonical_name(name))
        return
    if not Path(weights).is_file():
        close = difflib.get_close_matches(str(weights), WEIGHTS_CHOICES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise MedclfError(f"--weights {weights}: neither none, imagenet nor an existing file; {hint}"
                          "use --weights none|imagenet|PATH to a state dict")


def imagenet_weights(name):
    """torchvision's DEFAULT pretrained weights enum of architecture `name`."""
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (KeyError, ValueError, AttributeError) as exc:
        raise MedclfError(f"--weights imagenet: torchvision has no pretrained weights for {name}; "
                          "use --weights none") from exc


def _last_linear(module):
    """The (parent, attribute, linear) of the classifier head, wherever the architecture keeps it."""
    for attr in ("fc", "classifier", "heads", "head"):
        child = getattr(module, attr, None)
        if child is None:
            continue
        if isinstance(child, nn.Linear):
            return module, attr, child
        if isinstance(child, nn.Sequential):
            # classifier[-1] (vgg, mobilenet, efficientnet), heads.head (vit), ...
            for index in range(len(child) - 1, -1, -1):
                layer = child[index]
                if isinstance(layer, nn.Linear):
                    return child, str(index), layer
                if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
                    return child, str(index), layer  # squeezenet's 1x1 conv classifier
    return None


def remove_head(model, needed_for):
    """Replace the classifier head by the identity, in place (the model then returns its pooled
    features); returns the width of those features. `needed_for` completes the refusal when the
    architecture has no head medclf can find."""
    found = _last_linear(model)
    if found is None:
        raise MedclfError(f"{type(model).__name__}: no classifier head found (fc/classifier/heads); {needed_for}")
    parent, attr, layer = found
    width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if attr.isdigit():
        parent[int(attr)] = nn.Identity()
    else:
        setattr(parent, attr, nn.Identity())
    return width


def head_module(model):
    """The head layer itself (its parameters are what --freeze-backbone trains)."""
    found = _last_linear(model)
    if found is None:
        raise MedclfError(f"{type(model).__name__}: no classifier head found (fc/classifier/heads)")
    parent, attr, layer = found
    return getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]


def _replace_head(model, n_outputs):
    found = _last_linear(model)
    if found is None:
        raise MedclfError(f"{type(model).__name__}: no classifier head found (fc/classifier/heads)")
    parent, attr, old = found
    if isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, n_outputs, kernel_size=1)
    else:
        new = nn.Linear(old.in_features, n_outputs)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return new


def _hub_cache_has(weights):
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    return (hub_dir / Path(weights.url).name).is_file()


def _load_imagenet(name):
    weights = imagenet_weights(name)
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        cached = "found in" if _hub_cache_has(weights) else "not in"
        raise MedclfError(
            f"--weights imagenet: cannot download {weights.url} ({type(exc).__name__}: {exc}); the file is "
            f"{cached} the torch hub cache {torch.hub.get_dir()}/checkpoints. Use --weights none (train from "
            f"scratch), or --weights PATH with a local state dict file, or copy the file into that cache"
        ) from exc
    return model, weights


def load_state_dict_file(path):
    """A state dict from a file, safely: tensors and plain data only (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"{path}: weights file not found; use --weights none|imagenet|PATH")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends
        raise MedclfError(
            f"{path}: refused to load, it holds more than tensors and plain data ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); save weights with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # seed 002's {'state_dict', 'optimizer'} and medclf's best.pt
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # medclf's last.pt
    if not isinstance(obj, dict):
        raise MedclfError(f"{path}: not a state dict (found {type(obj).__name__})")
    return obj


def build_model(name, n_outputs, weights="none"):
    """Return (model, info): info has the canonical architecture name and the normalisation
    mean/std the weights expect (None = compute from the training split)."""
    name = canonical_name(name)
    info = {"architecture": name, "weights": str(weights), "mean": None, "std": None}
    if weights in (None, "none"):
        model = torchvision.models.get_model(name, weights=None)
        _replace_head(model, n_outputs)
    elif weights == "imagenet":
        model, enum = _load_imagenet(name)
        _replace_head(model, n_outputs)
        preprocess = enum.transforms()
        info["mean"] = list(getattr(preprocess, "mean", IMAGENET_MEAN))
        info["std"] = list(getattr(preprocess, "std", IMAGENET_STD))
        info["weights"] = f"imagenet:{enum}"
    else:
        state = load_state_dict_file(weights)
        model = torchvision.models.get_model(name, weights=None)
        head = _replace_head(model, n_outputs)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError:
            # Head shaped for another class count (e.g. ImageNet's 1000): load the backbone only.
            own = model.state_dict()
            state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            missing, unexpected = model.load_state_dict(state, strict=False)
        head_params = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
        absent = [k for k in missing if k not in head_params and not k.endswith("num_batches_tracked")]
        if absent or unexpected:
            raise MedclfError(
                f"{weights}: does not match {name} ({len(absent)} missing, {len(unexpected)} unexpected keys, "
                f"e.g. {(absent + list(unexpected))[:3]}); pass weights saved from the same --arch"
            )
    _drop_auxiliary_heads(model)
    return model, info


def _drop_auxiliary_heads(model):
    """inception_v3 and googlenet return extra auxiliary outputs in train mode; medclf trains the
    main head only, so their auxiliary classifiers are removed."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


PARAMETER_ROLES = ("backbone", "metadata", "head")


def parameter_roles(model):
    """{backbone, metadata, head: [parameters]}: a metadata FusionModel's three parts, or a plain
    classifier's head (the layer --freeze-backbone trains) and everything else."""
    if hasattr(model, "metadata_branch"):
        return {"backbone": list(model.backbone.parameters()),
                "metadata": list(model.metadata_branch.parameters()), "head": list(model.head.parameters())}
    head = {id(p) for p in head_module(model).parameters()}
    return {"backbone": [p for p in model.parameters() if id(p) not in head], "metadata": [],
            "head": [p for p in model.parameters() if id(p) in head]}


def parameter_groups(model, lr, lr_by_role=None):
    """Optimizer parameter groups, one per role with trainable parameters: the role's learning rate
    from `lr_by_role` ({role: lr or None}) or `lr` (--lr-backbone, --lr-metadata, --lr-head)."""
    lr_by_role = {role: rate for role, rate in (lr_by_role or {}).items() if rate is not None}
    if not lr_by_role:  # one learning rate: one group, as before these options existed (resume keeps working)
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": float(lr)}]
    groups = []
    for role, params in parameter_roles(model).items():
        params = [p for p in params if p.requires_grad]
        if params:
            rate = lr_by_role.get(role)
            groups.append({"params": params, "lr": float(lr if rate is None else rate), "name": role})
    return groups


def set_backbone_trainable(model, trainable):
    """--freeze-backbone: only the head (and a metadata branch) get gradients."""
    backbone = {id(p) for p in parameter_roles(model)["backbone"]}
    for p in model.parameters():
        p.requires_grad = trainable or id(p) not in backbone


def freeze_batchnorm_stats(model):
    """Keep frozen BatchNorm layers in eval mode whenever model.train() is called, so their
    running statistics never change (the HAM10000 original let them update)."""
    frozen = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())]
    original_train = model.train

    def train(mode=True):
        original_train(mode)
        for m in frozen:
            m.eval()
        return model

    model.train = train
    model.train(model.training)
    return len(frozen)
