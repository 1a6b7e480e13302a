"""Process rank, device and process-group set-up for bundles run under ``torchrun`` (or alone)."""

from __future__ import annotations

import os

import torch

__all__ = ["rank", "world_size", "distributed_device", "init_distributed", "shutdown_distributed"]


def rank() -> int:
    """This process's rank (0 outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def world_size() -> int:
    """Number of processes (1 outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def distributed_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU (gloo runs)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> int:
    """Initialise the default process group from torchrun's environment (NCCL on CUDA, else gloo).

    Sets the CUDA device of this process to ``LOCAL_RANK`` first, and lets ``ignite.distributed`` adopt
    the group on every rank (see the comment in the code). Returns the rank.
    """
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(distributed_device())
        torch.distributed.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    # ignite adopts an existing process group lazily, with a collective (new_group), at its first idist call;
    # when that call comes from a rank-0-only handler (ignite's Checkpoint asks idist.get_rank()) the other ranks
    # never join it and training deadlocks, so every rank syncs here
    import ignite.distributed as idist

    idist.sync()
    return torch.distributed.get_rank()


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the default process group (a no-op outside ``torch.distributed``).

    Rank 0 still saves checkpoints and writes results after the other ranks have finished training; a rank that
    destroys the group while a peer is still connected can abort the whole run (gloo: ``terminate called without
    an active exception``), so all ranks meet at a barrier first.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
