"""One process of benchmarks/distributed.py (run under torchrun): the training step under DDP on synthetic images,
then the all-reduce of the model's gradient volume on its own; rank 0 writes the figures to OUT.

    torchrun --nproc-per-node N benchmarks/ddp_step.py MODEL BATCH STEPS OUT
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist

from gpuvision.device import acceleration, pick_device, synchronize
from gpuvision.models import create_model, model_spec
from gpuvision.train import distributed
from gpuvision.train.recipes import create_recipe
from gpuvision.train.step import TrainStep

model_name, batch, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
world = distributed.world_from_env()
device = pick_device(distributed.device_request(world, "auto"))
distributed.start(world, device)
accel = acceleration.resolve(device, precision="fp32" if device.type == "cpu" else "auto", compile="off")
torch.manual_seed(0)
net = create_model(model_name, num_classes=10, in_channels=3, image_size=32)
net.to(device, memory_format=accel.memory_format)
recipe = create_recipe("fast" if model_name == "fastnet" else "standard", optimizer="sgd",
                       batch_size=batch * world.size)
recipe.resolve(50_000, 32)
step = TrainStep.create(net, recipe, device, accel, model_spec(model_name), world_size=world.size)
x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=accel.memory_format)
y = torch.randint(0, 10, (batch,), device=device)
for i in range(3):
    step(x, y, i, 10_000, batch * world.size)
distributed.barrier()
synchronize(device)
started = time.perf_counter()
for i in range(steps):
    step(x, y, 3 + i, 10_000, batch * world.size)
synchronize(device)
distributed.barrier()
step_s = (time.perf_counter() - started) / steps
grads = torch.zeros(sum(p.numel() for p in net.parameters()), device=device)
times = []
for _ in range(steps + 2):
    distributed.barrier()
    synchronize(device)
    t = time.perf_counter()
    if world.distributed:
        dist.all_reduce(grads)
    synchronize(device)
    times.append(time.perf_counter() - t)
if world.main:
    json.dump({"world_size": world.size, "step_s": step_s, "images_per_s": batch * world.size / step_s,
               "allreduce_ms": 1e3 * sorted(times[2:])[len(times[2:]) // 2], "grad_bytes": grads.numel() * 4,
               "device": str(device)}, open(out, "w"))
distributed.end_process(0)
