"""Classifiers that `medclf serve` can serve: one interface, a PyTorch run and (medclf.infer.onnx_model) ONNX.

A `Classifier` takes decoded images (8-bit RGB `PIL.Image`, as `medclf.data.imageio.read_image`
returns them) and applies the run's own preprocessing exactly as `medclf test` does: the
aspect-preserving resize and centre crop of `medclf.data.preprocess.resize_and_crop` to the run's cache side,
then the evaluation transform (centre crop to `img_size` for cropping presets, scaling to [0, 1],
the run's mean and std). `predict_proba` returns an (N, C) float array whose rows sum to 1, columns
in `class_names` order.

A classifier whose `metadata` is not None (a run trained with --metadata-features; its
medclf.metadata-encoder/1) also needs one metadata row per image: `predict_proba(images, rows)`
with each row a dict {column: value as text}, encoded by the run's own encoder
(`medclf.models.metadata.encode`, the path `medclf test` takes for a splits.csv row).

A `HeatmapClassifier` can also explain its decisions (Grad-CAM through `medclf.explain.heatmap`); only
the PyTorch model can, so `medclf serve --onnx` shows no heat maps.
"""

import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from medclf.core.errors import MedclfError


@runtime_checkable
class Classifier(Protocol):
    class_names: list
    img_size: int

    def predict_proba(self, images) -> np.ndarray:
        """(N, C) probabilities of N PIL images; rows sum to 1 (a metadata run: `predict_proba(images, rows)`)."""


@runtime_checkable
class HeatmapClassifier(Classifier, Protocol):
    heatmap_method: str

    def heatmaps(self, images, targets):
        """(views, maps): the (N, S, S, 3) uint8 crops the model saw and (N, S, S) maps in [0, 1]
        of the class index `targets[i]` for image i (a metadata run: `heatmaps(images, targets, rows)`)."""


class TorchClassifier:
    """A run folder's best.pt, loaded once (weights_only=True, eval mode). One lock serialises the
    forward passes, so concurrent requests never hold more than one batch of activations."""

    def __init__(self, run_dir, device="cpu", heatmap_method="gradcam", amp=None):
        from medclf.data import transforms
        from medclf.engine.precision import select_device
        from medclf.explain import heatmap
        from medclf.infer.predict import inference_precision, load_run

        self.run_dir = Path(run_dir)
        self.device = select_device(device)
        self.model, self.config, self.checkpoint = load_run(self.run_dir, self.device)
        self.metadata = self.config.get("metadata")  # the run's fitted encoder, or None
        # as `medclf test` predicts: --amp/--no-amp, else the run's own precision (bf16 where it trained with --amp)
        self.precision = inference_precision(self.config, self.device, amp)
        self.precision.prepare_model(self.model)
        run_input = transforms.eval_input(self.config)
        self.class_names = [str(c) for c in self.config["classes"]]
        self.img_size = run_input.img_size
        self.architecture = self.config["architecture"]
        self.side = run_input.side
        self._transform, self._view = run_input.transform, run_input.view
        self.heatmap_method = heatmap_method
        self.target_layer = (heatmap.fusion_target_layer(self.model, self.architecture) if self.metadata
                             else heatmap.find_target_layer(self.model, self.architecture))
        self._lock = threading.Lock()

    def describe(self):
        return {"backend": "torch", "run": str(self.run_dir), "architecture": self.architecture,
                "checkpoint": "best.pt", "epoch": int(self.checkpoint.get("epoch", 0)) or None,
                "img_size": self.img_size, "classes": self.class_names, "inference": self.precision.record()}

    def _pixels(self, img):
        """The uint8 (3, side, side) tensor `medclf test` caches for this image."""
        import torch

        from medclf.data.preprocess import resize_and_crop

        array = np.asarray(resize_and_crop(img.convert("RGB"), self.side), dtype=np.uint8)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def _batch(self, images):
        import torch

        return torch.stack([self._transform(self._pixels(img)) for img in images]).to(self.device)

    def encode_metadata(self, rows, count):
        """(N, width) float32 tensor of the images' metadata rows (dicts column -> text) by the
        run's encoder; None for an image-only run."""
        import pandas as pd
        import torch

        from medclf.models import metadata

        if self.metadata is None:
            return None
        names = [spec["name"] for spec in self.metadata["columns"]]
        rows = list(rows or [])
        if len(rows) != count:
            raise MedclfError(f"{self.run_dir}: trained with --metadata-features {','.join(names)}; give one "
                              f"metadata row per image ({count} images, {len(rows)} rows)")
        # a column some row lacks is absent, as in a splits file without it: encode refuses it by name
        present = [n for n in names if all(n in row for row in rows)]
        frame = pd.DataFrame([{n: row[n] for n in present} for row in rows], columns=present)
        return torch.from_numpy(metadata.encode(self.metadata, frame, "metadata rows", self.run_dir))

    def predict_proba(self, images, rows=None):
        import torch

        from medclf.engine.steps import forward, probabilities_from_logits

        if not images:
            return np.zeros((0, len(self.class_names)))
        features = self.encode_metadata(rows, len(images))
        inputs = self._batch(images) if features is None else [self._batch(images), features]
        with self._lock, torch.inference_mode(), self.precision.autocast():
            logits = forward(self.model, self.precision.to_device(inputs)).float().cpu()
        return probabilities_from_logits(logits).numpy()

    def heatmaps(self, images, targets, rows=None):
        """Grad-CAM as `medclf explain` computes it: a metadata run's image i is explained with its
        own row held fixed (medclf.models.metadata.BoundMetadata), one image at a time."""
        import torch

        from medclf.explain import heatmap
        from medclf.models import metadata

        if not images:
            return np.zeros((0, self.img_size, self.img_size, 3), np.uint8), np.zeros((0, self.img_size, self.img_size))
        features = self.encode_metadata(rows, len(images))
        pixels = [self._pixels(img) for img in images]
        views = torch.stack([self._view(p) for p in pixels]).permute(0, 2, 3, 1).numpy()
        batch = torch.stack([self._transform(p) for p in pixels]).to(self.device)
        with self._lock:
            if features is None:
                maps = heatmap.heatmaps(self.model, batch, list(targets), self.heatmap_method, self.target_layer)
            else:
                maps = np.concatenate([heatmap.heatmaps(metadata.BoundMetadata(self.model, row).to(self.device),
                                                        batch[i:i + 1], [int(targets[i])], self.heatmap_method,
                                                        self.target_layer)
                                       for i, row in enumerate(features)])
        return (views * 255).round().astype(np.uint8), maps
