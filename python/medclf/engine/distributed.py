"""Several processes with PyTorch's own engine: torchrun and DistributedDataParallel.

`torchrun --nproc-per-node N -m medclf train ...` starts N copies of `medclf train`; each finds
its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR/PORT for the
rendezvous), as torchvision's `init_distributed_mode` and timm's `world_info_from_env` do.
`medclf train --nproc N` is a shortcut that runs torchrun (`torch.distributed.run --standalone`)
in a subprocess with the same arguments. Backend: gloo on the CPU, nccl on CUDA (one GPU per
local rank). Without torchrun's variables the world is one process and nothing here does
anything, so the single-process path is unchanged.

The collectives used by training: `gather_in_order` (validation outputs in dataset order, the
sampler's padding dropped), `gather_cat` and `all_sum` (training outputs and losses of every
rank), `broadcast_object` (rank 0's decisions: the run name, the early-stopping verdict) and
`barrier` (ranks wait for the image cache that local rank 0 builds).
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from medclf.core.errors import MedclfError

# How long a collective may wait: a barrier waits while local rank 0 builds the image cache,
# which can take an hour for 30,000 images at 512 px on a few cores (docs/training.md). A dead
# rank does not make the others wait this long: torchrun ends the whole group when one fails.
COLLECTIVE_TIMEOUT = timedelta(hours=3)
# The command a worker runs: the `medclf` CLI (python -m medclf).
WORKER = ["-m", "medclf"]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self):
        return self.size > 1

    @property
    def is_main(self):
        return self.rank == 0


def world_from_env(environ=None):
    """The world torchrun describes in the environment; one process when it describes none."""
    environ = os.environ if environ is None else environ
    try:
        size = int(environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(environ.get("RANK", "0")), int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise MedclfError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers; start the processes "
                          "with torchrun (or `medclf train --nproc N`)") from None
    return World(rank, size, local_rank)


def start(world, device):
    """Join the process group (gloo on the CPU, nccl on CUDA) and return the world with its device:
    cuda:LOCAL_RANK on CUDA. A one-process world is returned as it is, on `device`."""
    if not world.distributed:
        return World(world.rank, world.size, world.local_rank, device)
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise MedclfError(f"local rank {world.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                              "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(world.local_rank)
        device, backend = torch.device("cuda", world.local_rank), "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return World(world.rank, world.size, world.local_rank, device)


def stop(world):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world):
    if world.distributed:
        dist.barrier()


def broadcast_object(world, obj):
    """Rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_sum(world, value):
    """The sum of a number over all ranks."""
    if not world.distributed:
        return value
    total = torch.tensor([float(value)], dtype=torch.float64, device=world.device)
    dist.all_reduce(total)
    return float(total.item())


def gather_cat(world, tensor):
    """Every rank's `tensor` (any first dimension) concatenated in rank order, on the CPU."""
    if not world.distributed:
        return tensor
    local = tensor.to(world.device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=world.device) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=world.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=world.device)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)]).cpu()


def gather_in_order(world, tensor, total):
    """The outputs of a split in dataset order, each item once. A DistributedSampler without
    shuffling gives rank r the items r, r + W, r + 2W, ... of the split padded (from its start) to a
    multiple of W, the same count on every rank; interleaving the ranks' outputs restores the
    order and cutting at `total` drops the padding."""
    if not world.distributed:
        return tensor
    local = tensor.to(world.device).contiguous()
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return torch.stack(parts, dim=1).reshape(-1, *local.shape[1:])[:total].cpu()


def epoch_gatherers(world, n_val):
    """(gather_train, gather_val) for engine.train_one_epoch / engine.evaluate: the training loss
    summed and outputs concatenated over ranks (the sampler's padding included: those images were
    trained on); the validation outputs in split order, each of the `n_val` images once. None, None
    for one process."""
    if not world.distributed:
        return None, None

    def gather_train(loss_sum, n, labels, logits):
        return all_sum(world, loss_sum), int(all_sum(world, n)), gather_cat(world, labels), gather_cat(world, logits)

    def gather_val(logits, labels):
        return gather_in_order(world, logits, n_val), gather_in_order(world, labels, n_val)

    return gather_train, gather_val


# ---------------------------------------------------------------- the model

def check_sync_bn(sync_bn, device_name):
    """--sync-bn is refused where the run will not be on CUDA (before anything is read or written)."""
    if sync_bn and (device_name == "cpu" or not torch.cuda.is_available()):
        raise MedclfError("--sync-bn needs CUDA (SyncBatchNorm runs on nccl); on the CPU leave it out: "
                          "each process then normalises its own batch")


def sync_batchnorm(model):
    """--sync-bn: BatchNorm statistics over the whole batch of all processes (CUDA only)."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(model, world):
    """The module that trains: `model` itself for one process, else DistributedDataParallel
    around it (gradients averaged over ranks at every step; `model` keeps the weights)."""
    if not world.distributed:
        return model
    device_ids = [world.local_rank] if world.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def share_buffers(world, model):
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at the
    start of each training forward, so after the last step each rank holds its own batch's update;
    validating with rank 0's makes the gathered metrics those of the weights rank 0 saves."""
    if not world.distributed:
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


# ---------------------------------------------------------------- the --nproc shortcut

def without_option(argv, option):
    """`argv` without `option VALUE` / `option=VALUE`."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            out.append(word)
    return out


def launch_command(argv, nproc):
    """torchrun on this machine (a free port, --standalone) running `medclf ARGV` in `nproc` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            *WORKER, *argv]


def launch(argv, nproc, resume_command):
    """Run `medclf ARGV` under torchrun in `nproc` processes and wait; a failed process is an error
    that says how to continue the run (`resume_command`)."""
    if world_from_env().distributed:
        raise MedclfError("--nproc starts torchrun itself; under torchrun leave it out")
    # subprocess starts torchrun by fork + exec, so the parent's torch/OpenMP threads are never
    # inherited by a forked Python (the fork-after-threads hazard).
    status = subprocess.run(launch_command(argv, nproc)).returncode
    if status != 0:
        raise MedclfError(f"torchrun: a training process failed (exit status {status}; its error is above); "
                          f"the finished epochs are saved: continue with `{resume_command}`")
