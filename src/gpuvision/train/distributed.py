"""Training on several processes, devices and machines: DDP through torch.distributed (NCCL on GPUs, gloo on CPUs),
launched by torchrun or a scheduler. No cluster of our own: the launcher sets the environment, this reads it.

    torchrun --nproc-per-node 4 -m gpuvision train --data DATA                   # 4 processes on one machine
    gpuvision train --nproc 4 --data DATA                                        # the same; runs torchrun for you
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m gpuvision train --data DATA --out /shared/runs/x                     # 2 machines, on each of them
    srun python -m gpuvision train ...      # SLURM without torchrun: SLURM_PROCID/NTASKS/LOCALID + MASTER_ADDR/PORT

A Kubernetes PyTorchJob sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT itself. The run directory must be one
all processes see (a shared file system across machines): only rank 0 writes it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import BadInput, UserError, require

TIMEOUT = timedelta(minutes=30)  # a collective that waits longer means a process died: fail instead of hanging


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    restarts: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT: how often the workers were restarted
    launched: bool = False  # started by a launcher (RANK set): the DDP path, even for one process

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the run uses the process group and DDP: several processes, or one a launcher started (so a
        one-GPU torchrun exercises the path many GPUs take)."""
        return self.size > 1 or self.launched


def world_from_env(env: dict | None = None) -> World:
    """The World torchrun (or a PyTorchJob) describes in RANK, WORLD_SIZE and LOCAL_RANK; under SLURM without
    torchrun, SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID stand in for them when RANK is unset."""
    env = os.environ if env is None else env
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        mapped = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                  "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
        require("MASTER_ADDR" in env and "MASTER_PORT" in env, "SLURM without torchrun: set MASTER_ADDR (the first "
                "node's address) and MASTER_PORT in the job script (see the README), or launch with torchrun",
                BadInput)
        if env is os.environ:  # init_process_group's env:// rendezvous reads them there
            os.environ.update(mapped)
        env = {**env, **mapped}
    try:
        return World(rank=int(env.get("RANK", 0)), size=int(env.get("WORLD_SIZE", 1)),
                     local_rank=int(env.get("LOCAL_RANK", 0)),
                     restarts=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)), launched="RANK" in env)
    except ValueError as e:
        raise BadInput(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({e})") from e


def device_request(world: World, request: str) -> str:
    """Each process of a multi-GPU run takes the GPU of its local rank."""
    if world.distributed and request in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return request


def start(world: World, device: torch.device) -> None:
    """Join the run's process group (NCCL for CUDA, gloo otherwise); nothing for a single process."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        store, rank, size = next(dist.rendezvous("env://", timeout=TIMEOUT))
        # torchrun's store outlives a restart of the workers, and process groups would read the addresses of the
        # workers they replace from it (a refused or hung connection): each attempt gets keys of its own.
        store = dist.PrefixStore(f"gpuvision/attempt-{world.restarts}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=TIMEOUT,
                                **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"could not join the {world.size}-process run ({backend}): {str(e).splitlines()[0]}; "
                        "check MASTER_ADDR/MASTER_PORT (or torchrun's --rdzv-endpoint)") from e


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over every process (in one collective); the tensors as they are for one process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(values)
    flat = torch.cat([v.reshape(-1).double() for v in values])
    dist.all_reduce(flat)
    out, offset = [], 0
    for v in values:
        out.append(flat[offset : offset + v.numel()].view_as(v).to(v.dtype))
        offset += v.numel()
    return out


def all_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of `x` (same trailing shape, any number of rows), concatenated in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([len(x)], device=x.device))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros(longest, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def broadcast(value, device: torch.device):
    """Rank 0's value (anything JSON holds) on every process, for decisions that must agree: a default directory
    with a time stamp in it, settings resolved from measurements. As JSON bytes: torch's object collectives pickle."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    data = json.dumps(value).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().tolist()).decode())


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------ synchronised batch norm
class SyncBatchNorm(nn.BatchNorm2d):
    """Batch norm over the global batch: every process's statistics summed (differentiably) before normalising.

    Written here because torch.nn.SyncBatchNorm refuses CPU tensors (gloo runs); two passes (mean, then the
    squared deviations) as BatchNorm2d computes them, so one process and N give the same figures."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = (0, 2, 3)
        xf = x.float()
        count = all_reduce(xf.new_tensor([x.numel() / x.shape[1]]))
        mean = all_reduce(xf.sum(dims)) / count
        centred = xf - mean.view(1, -1, 1, 1)
        var = all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def sync_batch_norm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by SyncBatchNorm, keeping its parameters, buffers and settings."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats).to(child.weight.device if child.affine else None)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            if child.affine:
                replacement.weight.requires_grad_(child.weight.requires_grad)
                replacement.bias.requires_grad_(child.bias.requires_grad)
            setattr(model, name, replacement)
        else:
            sync_batch_norm(child)
    return model


def wrap(model: nn.Module, device: torch.device, synced_norms: bool) -> nn.Module:
    """DDP around the model (gradients averaged in buckets during backward); rank 0's buffers broadcast each
    step unless the norms are synchronised (then they are equal everywhere already)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch 2.14 renamed broadcast_buffers (deprecated) to forward_sync_buffers; 2.11 knows only the old name
    name = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=ids, **{name: not synced_norms})


# ------------------------------------------------------------------------------------------ launching
def launch(argv: list[str], nproc: int, max_restarts: int) -> None:
    """Run `gpuvision <argv>` (without --nproc/--max-restarts) in `nproc` processes on this machine under torch's
    elastic agent, as `torchrun --standalone` does; a failed worker is restarted up to `max_restarts` times (it then
    resumes from the last checkpoint). A failure after that is one UserError: the worker printed its own error."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=max_restarts,
                          monitor_interval=0.5)
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: processes sharing a CPU should not oversubscribe it
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.ERROR)  # its warnings restate what the workers print
    try:
        elastic_launch(config, sys.executable)("-m", "gpuvision", *without_launch_flags(argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise UserError(f"training failed in process {rank} of {nproc} (exit code {failure.exitcode}"
                        f"{f' after {max_restarts} restart(s)' if max_restarts else ''}): its error is above") from None
    finally:
        agent_log.setLevel(level)


def without_launch_flags(argv: list[str]) -> list[str]:
    """argv less --nproc and --max-restarts (and their values): what each worker runs."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--nproc", "--max-restarts"):
            skip = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            rest.append(arg)
    return rest


def under_launcher() -> bool:
    """Whether this process is one of a launched group (torchrun, a PyTorchJob, SLURM tasks)."""
    return "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def end_process(code: int) -> None:
    """End a worker at once after its work is flushed: gloo processes sometimes abort at interpreter exit after a
    correct run ("terminate called without an active exception"), which would turn a good run into a failed one.
    For the CLI's entry only (library code never ends the process)."""
    stop()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
