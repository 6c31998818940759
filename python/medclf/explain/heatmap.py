"""Heat maps of a classifier: one pure entry, `heatmaps(model, images, targets, method, layer)`.

CAM methods (gradcam, gradcam++, scorecam, eigencam, layercam) run through pytorch-grad-cam
(PyPI `grad-cam`), gradient methods (ig, saliency, occlusion) through Captum. Every map is
(N, H, W) float in [0, 1] at the input's size (per image: minus its minimum, over its range;
a constant map is all zeros).

Known pitfalls, handled once in `explainable_copy`:
  * the model runs in eval mode (BatchNorm statistics and dropout frozen);
  * it works on a deep copy whose ReLUs are not in-place, and whose target layer hands the rest
    of the network a *clone* of its output, so an in-place ReLU after it (DenseNet's forward does
    `F.relu(features, inplace=True)`) cannot overwrite the activations the CAM has recorded;
  * a single-logit head becomes two columns [-logit, +logit], so class 1 (the positive class)
    is explained through its logit and class 0 through the evidence against it.

Target layer: `TARGET_LAYERS` for the architectures medclf's docs and tests train; for any other
model, the last top-level block holding a Conv2d (the head excluded) whose output is an
(N, C, h, w) map; else a MedclfError naming --target-layer.
"""

import copy

import numpy as np
import torch
from torch import nn

from medclf.core.errors import MedclfError
from medclf.explain.methods import CAM_METHODS, METHODS
from medclf.models import architectures as models

# The last convolutional block of the ten architectures the seeds used (tests/test_models.py).
TARGET_LAYERS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "resnext50_32x4d": "layer4",
    "vgg11_bn": "features",
    "densenet121": "features",
    "densenet161": "features",
    "mobilenet_v2": "features",
    "mobilenet_v3_large": "features",
    "efficientnet_b0": "features",
    "efficientnet_b2": "features",
}
IG_STEPS = 32


class _Tap(nn.Module):
    """Wraps the target layer: the CAM hooks `tap` (the layer's own output); the rest of the
    network receives a clone, so in-place operations downstream cannot change what was recorded."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.tap = nn.Identity()

    def forward(self, *args, **kwargs):
        return self.tap(self.layer(*args, **kwargs)).clone()


class _SignedLogit(nn.Module):
    """(N, 1) logit -> (N, 2) scores [-logit, logit]: class k of a single-logit head gets a score."""

    def forward(self, logits):
        return torch.cat([-logits, logits], dim=1) if logits.shape[1] == 1 else logits


def _module(model, dotted):
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        return None


def _spatial_output(model, name, size=64):
    """Whether the named block outputs an (N, C, h, w) map smaller than a `size` input."""
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = getattr(output, "shape", None)

    handle = model.get_submodule(name).register_forward_hook(record)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    except Exception:  # the model may not accept this size; the block is then not usable
        return False
    finally:
        handle.remove()
        model.train(was_training)
    shape = seen.get("shape")
    return shape is not None and len(shape) == 4 and shape[1] > 3 and 1 <= shape[2] <= size and 1 <= shape[3] <= size


def find_target_layer(model, architecture=None):
    """Dotted name of the target layer: the table, else the last conv block found."""
    if architecture in TARGET_LAYERS:
        return TARGET_LAYERS[architecture]
    head = models.head_module(model) if models._last_linear(model) is not None else None
    candidates = [name for name, child in model.named_children()
                  if any(isinstance(m, nn.Conv2d) for m in child.modules())
                  and not (head is not None and any(m is head for m in child.modules()))]
    for name in reversed(candidates):
        if _spatial_output(model, name):
            return name
    raise MedclfError(
        f"{architecture or type(model).__name__}: no convolutional block found to explain; "
        "pass --target-layer NAME (a module name from model.named_modules(), e.g. layer4 or features)"
    )


def fusion_target_layer(model, architecture):
    """The default layer of a metadata fusion model: its backbone's (backbone.layer4 for a ResNet)."""
    return "backbone." + find_target_layer(model.backbone, architecture)


def explainable_copy(model, layer_name):
    """(scorer, tap): a deep copy in eval mode, with non-in-place ReLUs, the target layer tapped
    and a two-column head for single-logit models. The caller's model is left untouched."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    if _module(model, layer_name) is None:
        raise MedclfError(f"--target-layer {layer_name}: no such module in {type(model).__name__}; "
                          "use a name from model.named_modules(), e.g. layer4 or features")
    parent_name, _, attr = layer_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    wrapped = _Tap(model.get_submodule(layer_name))
    if attr.isdigit():
        parent[int(attr)] = wrapped
    else:
        setattr(parent, attr, wrapped)
    for p in model.parameters():
        p.requires_grad_(True)
    return nn.Sequential(model, _SignedLogit()).eval(), wrapped.tap


def normalise_maps(maps):
    """Per map: (m - min) / (max - min); a constant or non-finite map becomes zeros."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def _cam_class(method):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM,
            "eigencam": EigenCAM, "layercam": LayerCAM}[method]


def _cam_maps(scorer, tap, images, targets, method):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with _cam_class(method)(model=scorer, target_layers=[tap]) as cam:
        if method == "scorecam":
            cam.batch_size = 16
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(k)) for k in targets])


def _captum_maps(scorer, images, targets, method):
    from captum.attr import IntegratedGradients, Occlusion, Saliency

    images = images.clone().requires_grad_(True)
    target = [int(k) for k in targets]
    if method == "saliency":
        attr = Saliency(scorer).attribute(images, target=target, abs=True)
    elif method == "ig":
        attr = IntegratedGradients(scorer).attribute(images, target=target, n_steps=IG_STEPS,
                                                     internal_batch_size=64).abs()
    else:  # occlusion: drop in the target's score when a patch is replaced by 0 (the mean colour)
        side = images.shape[-1]
        window = max(2, side // 8)
        attr = Occlusion(scorer).attribute(images, target=target, sliding_window_shapes=(3, window, window),
                                           strides=(3, max(1, window // 2), max(1, window // 2)), baselines=0.0)
        attr = attr.clamp(min=0)
    return attr.detach().sum(dim=1).cpu().numpy()


def heatmaps(model, images, targets, method="gradcam", layer_name=None, architecture=None):
    """(N, H, W) maps in [0, 1] of `targets` (one class index per image) for a batch of
    normalised images (N, 3, H, W). `model` is not modified."""
    if method not in METHODS:
        raise MedclfError(f"--method {method}: unknown; use one of {', '.join(METHODS)}")
    if len(targets) != len(images):
        raise MedclfError(f"{len(targets)} targets for {len(images)} images; give one class per image")
    layer_name = layer_name or find_target_layer(model, architecture)
    scorer, tap = explainable_copy(model, layer_name)
    with torch.enable_grad():
        if method in CAM_METHODS:
            maps = _cam_maps(scorer, tap, images, targets, method)
        else:
            maps = _captum_maps(scorer, images, targets, method)
    return normalise_maps(maps)
