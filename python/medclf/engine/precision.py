"""Numeric precision of a run or an inference: the one place that decides it.

`choose_precision(device, amp)` turns `--amp` / `--no-amp` / neither into one of
  fp32  full precision (--no-amp, or no fast lower precision on this device);
  bf16  torch.autocast bfloat16: CPUs with native bf16 (AVX-512 BF16, AMX) and CUDA GPUs that
        support it (Ampere and later);
  fp16  torch.autocast float16 with a GradScaler: CUDA GPUs without bf16.
Mixed precision also stores the model and its inputs channels_last, the layout oneDNN and cuDNN
run reduced-precision convolutions fastest in. Training, `test`, `explain` and `serve` all call
`choose_precision` and use the returned `Precision`, so they agree on what `--amp` means.
"""

import contextlib
import sys
from dataclasses import dataclass

import torch

from medclf.core.errors import MedclfError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(requested):
    """The torch device of `--device auto|cpu|cuda` (gpu: cuda); cuda without a GPU warns and runs on the CPU."""
    if requested in ("cuda", "gpu") and not torch.cuda.is_available():
        print("medclf: warning: CUDA requested but not available; running on the CPU", file=sys.stderr)
        return torch.device("cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested not in ("cpu", "cuda", "gpu"):
        raise MedclfError(f"--device {requested}: use auto, cpu or cuda")
    return torch.device("cuda" if requested in ("cuda", "gpu") else "cpu")


def cpu_supports_bf16():
    """True when oneDNN reports native bf16 kernels on this CPU (AVX-512 BF16 or AMX). Elsewhere
    bf16 autocast on the CPU is emulated and slower than fp32, so medclf stays in fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN, or without the probe
        return False


def cuda_supports_bf16():
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """A device, the precision used on it and why (the reason is logged and recorded)."""

    device: torch.device
    name: str
    reason: str

    @property
    def amp(self):
        return self.name != "fp32"

    @property
    def memory_format(self):
        return torch.channels_last if self.amp else torch.contiguous_format

    def autocast(self):
        """The context forward passes (and the loss) run in."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.name])

    def prepare_model(self, model):
        """The model on the device, channels_last under mixed precision (in place; returned)."""
        return model.to(self.device, memory_format=self.memory_format)

    def to_device(self, inputs):
        """A batch on the device, images in the model's layout; non-blocking (the copy overlaps the
        previous step when the loader pins memory). (images, metadata) of a metadata run: each."""
        if isinstance(inputs, (list, tuple)):
            return [self.to_device(x) for x in inputs]
        inputs = inputs.to(self.device, non_blocking=True)
        return inputs.contiguous(memory_format=self.memory_format) if inputs.ndim == 4 else inputs

    def grad_scaler(self):
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return torch.amp.GradScaler("cuda") if self.name == "fp16" else None

    def record(self):
        return {"device": str(self.device), "precision": self.name, "reason": self.reason}


def choose_precision(device, amp=None):
    """The Precision for `device`: amp None (the default) or True = the fastest supported mixed
    precision, False = fp32. Where none is supported the result is fp32 and the reason says so."""
    device = torch.device(device)
    if amp is False:
        return Precision(device, "fp32", "mixed precision off (--no-amp)")
    if device.type == "cuda":
        if cuda_supports_bf16():
            return Precision(device, "bf16", "CUDA device supports bf16")
        return Precision(device, "fp16", "CUDA device without bf16: fp16 with a gradient scaler")
    if device.type == "cpu":
        if cpu_supports_bf16():
            return Precision(device, "bf16", "CPU has native bf16 (oneDNN)")
        return Precision(device, "fp32", "this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 "
                                         "would be slower than fp32")
    return Precision(device, "fp32", f"no mixed precision on {device.type} devices in medclf")


def autocast_for(device, amp=None):
    """The autocast context of one forward pass on `device` (for a stage holding a model, e.g.
    `serve`): `with autocast_for(device): logits = model(images)`."""
    return choose_precision(device, amp).autocast()


def log_precision(command, precision):
    """One stderr line naming the precision used and why."""
    print(f"medclf {command}: {precision.name} on {precision.device} ({precision.reason})", file=sys.stderr)
