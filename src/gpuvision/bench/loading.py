"""The data rows: decoding (one PIL call per image, as a torchvision Dataset does, against gpuvision's parallel
decoder), loading (a cold decode against the cache), host-to-device copies (pageable against pinned), and batches
(a torch DataLoader with per-image transforms against gpuvision's device-resident batches).

Each function returns (value, figures, note) for one row, or raises `Skipped`."""

from __future__ import annotations

import io
import time
from itertools import islice

import numpy as np
import torch

from ..data import load_images
from ..data.augment import Augment
from ..data.images import PARALLEL_MIN, decode_set
from ..data.input_spec import InputSpec
from ..data.limits import env_bytes
from ..data.loader import DeviceLoader
from ..data.sources import encoded_images
from ..device import synchronize
from ..device.hardware import usable_cores
from ..device.probes import timed_rate
from .measure import Scale, Skipped

H2D_BYTES = 256 << 20  # the most copied per host-to-device row: larger than any cache, smaller than any GPU


def per_image_decode(src: str, scale: Scale) -> tuple[float, dict, str]:
    """Images/s of the textbook loop: PIL opens and converts each image, numpy stacks them."""
    from PIL import Image

    items = _encoded(src, scale)
    started = time.perf_counter()
    arrays = [np.asarray(Image.open(io.BytesIO(x) if isinstance(x, bytes) else x).convert("RGB")) for x in items]
    np.stack(arrays)
    return len(items) / (time.perf_counter() - started), {"images": len(items)}, \
        f"{len(items)} encoded images, one Image.open(...).convert('RGB') each, then np.stack"


def parallel_decode(src: str, scale: Scale) -> tuple[float, dict, str]:
    """Images/s of gpuvision's decoder (header probe, decode and resize in worker processes) on the same images."""
    items = _encoded(src, scale)
    started = time.perf_counter()
    decode_set(items, None, None, env_bytes("GPUVISION_MAX_DECODED_BYTES"), "bench")
    seconds = time.perf_counter() - started
    workers = "in one process" if len(items) < PARALLEL_MIN else f"over {min(usable_cores(), 16)} processes"
    return len(items) / seconds, {"images": len(items)}, (f"the same {len(items)} images, {workers} (gpuvision "
                                                          f"decodes in parallel from {PARALLEL_MIN} images up)")


def _encoded(src: str, scale: Scale) -> list:
    items = encoded_images(src, scale.decode_images)
    if not items:
        raise Skipped(f"{src} holds raw pixels: nothing to decode")
    return items


def cold_load(src: str) -> tuple[float, dict, str]:
    started = time.perf_counter()
    images = load_images(src, cached=False)
    seconds = time.perf_counter() - started
    return len(images) / seconds, {"seconds": seconds, "images": len(images)}, \
        "every image read and decoded, the cache neither read nor written"


def cached_load(src: str) -> tuple[float, dict, str]:
    load_images(src)  # makes sure the cache entry exists
    started = time.perf_counter()
    images = load_images(src)
    seconds = time.perf_counter() - started
    return len(images) / seconds, {"seconds": seconds, "images": len(images)}, \
        "the decoded uint8 array read back from the cache (the source's bytes hashed to find it)"


def host_to_device(images: np.ndarray, device: torch.device, pinned: bool) -> tuple[float, dict, str]:
    """GB/s copying the decoded images (up to H2D_BYTES) from host memory to the device."""
    if device.type != "cuda":
        raise Skipped("no copy: the CPU trains from host memory")
    flat = torch.from_numpy(np.array(images.reshape(-1)[:H2D_BYTES]))  # a copy of its own (the cache's is read-only)
    host = flat.pin_memory() if pinned else flat
    rate = timed_rate(lambda: host.to(device, non_blocking=pinned), device)
    return rate * host.numel() / 1e9, {"bytes": host.numel()}, f"{host.numel() / 2**20:.0f} MiB of uint8 images " \
        "a copy"


class _PerImage(torch.utils.data.Dataset):
    """The usual Dataset: one image at a time through torchvision's transforms (crop, flip, normalise)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: InputSpec, translate: int):
        from torchvision.transforms import v2

        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.RandomCrop(spec.size, padding=translate, padding_mode="reflect"),
                                     v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32),
                                     v2.Normalize(list(spec.mean), list(spec.std))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def dataloader_batches(images: torch.Tensor, labels: torch.Tensor, spec: InputSpec, augment: Augment,
                       batch: int, device: torch.device, scale: Scale) -> tuple[float, dict, str]:
    """Images/s of augmented, normalised batches arriving on the device from a DataLoader over host images."""
    workers = min(4, usable_cores())
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(_PerImage(images, labels, spec, augment.translate), batch_size=batch,
                                         shuffle=True, num_workers=workers, pin_memory=cuda, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    rate = _batches_per_s(((x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)) for x, y in loader),
                          device, scale)
    return rate * batch, {"workers": workers}, (f"torchvision.transforms.v2 per image (reflect-padded crop, flip, "
                                                f"normalise) in {workers} worker processes, pin_memory {cuda}")


def device_batches(images: torch.Tensor, labels: torch.Tensor, spec: InputSpec, augment: Augment, batch: int,
                   device: torch.device, scale: Scale) -> tuple[float, dict, str]:
    """Images/s of the same batches drawn from images resident on the device (gpuvision's DeviceLoader)."""
    on_device = images.to(device), labels.to(device)
    loader = DeviceLoader(*on_device, batch, spec, augment, torch.Generator(device=device).manual_seed(0),
                          drop_last=True)
    batches = (b for epoch in range(len(augment.sides), 1 << 30) for b in loader.epoch(epoch))  # full-size epochs
    return _batches_per_s(batches, device, scale) * batch, {}, \
        "the decoded set on the device once; each batch one gather (crop, flip) and a normalisation there"


def _batches_per_s(batches, device: torch.device, scale: Scale) -> float:
    """Batches a second after the first (which pays worker start-up), over `scale.loader_batches`."""
    batches = iter(batches)
    next(batches)
    synchronize(device)
    started = time.perf_counter()
    count = sum(1 for _ in islice(batches, scale.loader_batches))
    synchronize(device)
    if count == 0:
        raise Skipped("too few images for two batches")
    return count / (time.perf_counter() - started)
