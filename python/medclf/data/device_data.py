"""Feeding a CUDA device from the decode-once uint8 cache without starving it.

On the CPU the DataLoaders of medclf.data.datasets are used as they are. On a CUDA device:
  - when the split's uint8 cache fits in a quarter of the free device memory, it is copied to the
    device once and every batch is gathered and augmented there (`DeviceBatches`): the 2-16 CPU
    cores of a GPU server no longer run the per-image warps, crops and normalisation;
  - otherwise the loader keeps its workers but pins its batches in page-locked memory, so the
    non-blocking copies (`Precision.to_device`) overlap the previous step.
`DeviceBatches` draws its batches from the loader's own batch sampler and runs the loader's own
transform on each image in the main process, drawing from torch's global random stream as a
DataLoader with 0 workers does; on the CPU it yields the same batches as such a DataLoader over a
sequential sampler (what the tests check: no GPU is needed for that). A shuffled order differs
from the DataLoader's, which first draws a base seed from the generator.
"""

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

DEVICE_CACHE_FRACTION = 4  # a split's cache may take up to 1/4 of the free device memory


def cache_fits(n_bytes, free_bytes):
    """Whether a cache of n_bytes may live on a device with free_bytes free: the rest stays for the
    model, its activations and cuDNN's workspaces."""
    return n_bytes <= free_bytes // DEVICE_CACHE_FRACTION


class DeviceBatches:
    """Batches of a CachedImageDataset held on `device`: (float images, int64 labels) per batch of
    `loader.batch_sampler`, the transform applied image by image on the device."""

    def __init__(self, loader, device):
        self.dataset = loader.dataset
        self.batch_sampler = loader.batch_sampler
        self.images = torch.from_numpy(np.ascontiguousarray(self.dataset.cache)).to(device)
        self.labels = torch.as_tensor(self.dataset.labels, dtype=torch.long).to(device)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        transform = self.dataset.transform
        for indices in self.batch_sampler:
            index = torch.as_tensor(indices, device=self.images.device)
            yield torch.stack([transform(image) for image in self.images[index]]), self.labels[index]


def pinned(loader):
    """The same loader (sampler, workers, seeding) with its batches in page-locked memory."""
    return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, num_workers=loader.num_workers,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator, pin_memory=True)


def for_device(loader, device, free_bytes=None):
    """`loader` as the training loop should read it on `device` (see the module docstring).
    free_bytes: the device's free memory (default: asked from CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return loader
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    n_bytes = int(np.prod(loader.dataset.cache.shape))
    if cache_fits(n_bytes, free_bytes):
        print(f"medclf train: {n_bytes / 2**20:.0f} MiB of cached images copied to {device}; batches are "
              "augmented there", file=sys.stderr)
        return DeviceBatches(loader, device)
    print(f"medclf train: the cache ({n_bytes / 2**20:.0f} MiB) exceeds 1/{DEVICE_CACHE_FRACTION} of the free "
          f"memory of {device}; batches come through pinned memory", file=sys.stderr)
    return pinned(loader)
