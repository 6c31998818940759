"""Averaged copies of the weights a run trains: EMA (--ema-decay) and SWA (--swa-epochs).

Both are torch.optim.swa_utils.AveragedModel copies of the live model, kept beside it and
evaluated on val like it (medclf.train.training picks, each epoch, the weights with the better
monitored value; docs/training.md, "EMA and SWA"):
- EMA: updated after every optimiser step, ema = decay * ema + (1 - decay) * weights; the first
  update copies the weights (AveragedModel's rule). BatchNorm running statistics are averaged the
  same way (use_buffers=True: no extra pass over the data; counters such as num_batches_tracked
  are copied).
- SWA: the plain mean of the weights at the end of each epoch of the averaging phase; its
  BatchNorm statistics are recomputed on the train loader once the phase ends
  (`recompute_batchnorm`, torch's update_bn for medclf's batches).
"""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medclf.engine.steps import forward


def ema_update_fn(decay):
    """AveragedModel's multi_avg_fn: EMA of floating tensors, integer counters copied."""
    ema = get_ema_multi_avg_fn(float(decay))

    def update(averaged, current, num_averaged):
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            ema(averaged, current, num_averaged)
        else:
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)

    return update


def _averaged(model, **kwargs):
    averaged = AveragedModel(model, **kwargs)
    # The deep copy shares an instance-level `train` override of the live model (e.g.
    # models.freeze_batchnorm_stats), which would switch the live model's mode, not the copy's.
    averaged.module.__dict__.pop("train", None)
    return averaged


def attach_ema(optimizer, model, decay):
    """An EMA copy of `model` updated after every step `optimizer` takes (a step post-hook, so
    a step skipped by the fp16 GradScaler is not averaged)."""
    ema = _averaged(model, multi_avg_fn=ema_update_fn(decay), use_buffers=True)
    optimizer.register_step_post_hook(lambda *_: ema.update_parameters(model))
    return ema


def swa_model(model):
    """An SWA copy of `model` (parameters averaged; BatchNorm statistics recomputed at the end)."""
    return _averaged(model)


@torch.no_grad()
def recompute_batchnorm(model, loader, precision):
    """BatchNorm running statistics of `model` recomputed from scratch over `loader` (the
    cumulative mean over its batches, like torch.optim.swa_utils.update_bn, which cannot pass a
    metadata run's (images, metadata) batches or use the run's precision)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for images, _ in loader:
        with precision.autocast():
            forward(model, precision.to_device(images))
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.train(was_training)
