"""Start 1..N training processes: world size 1 runs in-process with no process group;
N > 1 spawns N processes (NCCL on GPUs, gloo on CPUs); under ``torchrun`` the
environment's rendezvous is used."""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger("albef.launch")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def launch(main_func: Callable[..., Any], num_processes: int = 1, args: tuple = (), timeout_min: int = 30) -> None:
    if under_torchrun():
        if not dist.is_initialized():
            dist.init_process_group(_backend(), init_method="env://", timeout=timedelta(minutes=timeout_min))
        _set_device(int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        try:
            main_func(*args)
        finally:
            dist.destroy_process_group()
        return
    if num_processes <= 1:
        main_func(*args)
        return
    from albef.plugins import load_plugins

    load_plugins()  # fail before spawning if a plugin is broken
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ValueError(f"--num-gpus {num_processes} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(_worker, nprocs=num_processes, args=(main_func, num_processes, url, args, timeout_min), daemon=False, start_method="spawn")


def _set_device(local_rank: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)


def _worker(rank: int, main_func: Callable[..., Any], world_size: int, url: str, args: tuple, timeout_min: int) -> None:
    # Spawned processes start from a fresh interpreter: discover the plugins here too, before
    # any rank builds a model, so a broken plugin fails every rank the same way.
    from albef.plugins import load_plugins

    load_plugins()
    dist.init_process_group(_backend(), init_method=url, world_size=world_size, rank=rank, timeout=timedelta(minutes=timeout_min))
    _set_device(rank)
    try:
        dist.barrier()
        main_func(*args)
    finally:
        dist.destroy_process_group()
