"""The evaluation preprocessing of `medclf test`, in PIL and numpy only (no torch).

`medclf test` caches each image resized with its aspect ratio kept (shorter side -> `side`) and
centre-cropped to `side` x `side` (`resize_and_crop`, also used by medclf.data.datasets's cache), then
applies `transforms.eval_transform`: a centre crop to `img_size` when the preset caches a larger
square, scaling to [0, 1] and the run's mean and std. `model_input` repeats those steps in numpy
with torchvision's crop offsets and float32 arithmetic, so an exported model served without torch
(medclf.infer.onnx_model) sees the same input tensor as the PyTorch run.
"""

import numpy as np
from PIL import Image


def resize_and_crop(img, side):
    """Aspect-preserving resize (shorter side -> side) then a centre crop to side x side."""
    w, h = img.size
    scale = side / min(w, h)
    new_w, new_h = max(side, round(w * scale)), max(side, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (new_w - side) // 2, (new_h - side) // 2
    return img.crop((left, top, left + side, top + side))


def center_crop(pixels, size):
    """The centre `size` x `size` of (..., H, W) pixels, at torchvision CenterCrop's offsets
    (round((H - size) / 2), which rounds half to even: 4.5 -> 4)."""
    height, width = pixels.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return pixels[..., top:top + size, left:left + size]


def model_input(images, side, img_size, mean, std):
    """(N, 3, img_size, img_size) float32 network input of N PIL images, as `medclf test` builds it."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    batch = np.empty((len(images), 3, img_size, img_size), dtype=np.float32)
    for i, img in enumerate(images):
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        pixels = np.asarray(resize_and_crop(rgb, side), dtype=np.uint8).transpose(2, 0, 1)
        scaled = center_crop(pixels, img_size).astype(np.float32) * np.float32(1.0 / 255)  # v2.ToDtype(scale=True)
        batch[i] = (scaled - mean) / std  # v2.Normalize, in float32 like the tensor it normalises
    return batch
