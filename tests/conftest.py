"""Shared fixtures: a private decode cache, real data subsets, and models trained once per test session."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the clone; on a GPU machine, where ../shared does not travel, the copy gpu.sh carries in .local/
CIFAR_JPEG = next((p for p in (ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
                                ROOT / ".local" / "cifar10-jpeg.tar.gz") if p.exists()),
                  ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test session decodes into its own cache, so tests see cold loads and never touch ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["GPUVISION_CACHE"] = str(path)
    return path


def cifar_members(per_class_train: int, per_class_test: int) -> list[tuple[str, bytes]]:
    """The first N train and M test JPEGs of each CIFAR-10 class from the real archive (a stratified subset)."""
    if not CIFAR_JPEG.exists():
        pytest.skip(f"{CIFAR_JPEG} is missing")
    wanted, taken, out = {"train": per_class_train, "test": per_class_test}, {}, []
    with tarfile.open(CIFAR_JPEG) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            key = (parts[0], parts[1])
            if taken.get(key, 0) < wanted.get(parts[0], 0):
                taken[key] = taken.get(key, 0) + 1
                out.append((member.name, tar.extractfile(member).read()))
    return out


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory) -> Path:
    """An ImageFolder tree train/<class>/*.jpg, test/<class>/*.jpg: 300 + 60 real CIFAR-10 images per class."""
    root = tmp_path_factory.mktemp("cifar-subset")
    for name, data in cifar_members(300, 60):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture(scope="session")
def cifar_subset_tar(tmp_path_factory) -> Path:
    """A .tar.gz of a small real CIFAR-10 subset (50 + 10 images per class)."""
    path = tmp_path_factory.mktemp("cifar-tar") / "cifar-small.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in cifar_members(50, 10):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained narrow fastnet for digits as a complete model directory, made without training (unit tests)."""
    import torch

    from gpuvision.artifact import Inference, Manifest, SplitRecord, save_weights, write_manifest
    from gpuvision.data import load_images, make_split
    from gpuvision.data.input_spec import InputSpec
    from gpuvision.data.split import save_split
    from gpuvision.models import create_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    out.mkdir()
    images = load_images("digits")
    split = make_split(images)
    save_split(out / "split.json", images, split, 0)
    args = {"num_classes": 10, "in_channels": 1, "image_size": 8, "widths": [8, 8, 8]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_model("fastnet", **args)
    save_weights(out / "model.safetensors", net)
    (out / "metrics.jsonl").write_text("")
    manifest = Manifest(format="safetensors", weights="model.safetensors",
                        architecture={"name": "fastnet", "args": args}, classes=images.classes,
                        input=InputSpec.from_images(torch.from_numpy(images.images[split.train])),
                        split=SplitRecord("split.json", images.source, images.fingerprint, split.sizes()),
                        inference=Inference("eager", "fp32"), tta_level=2)
    write_manifest(out, manifest, ["model.safetensors", "split.json", "metrics.jsonl"])
    return out


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory) -> Path:
    """A fastnet trained on digits with the default recipe (fp32 on the CPU), built once per session."""
    import gpuvision

    out = tmp_path_factory.mktemp("models") / "digits"
    gpuvision.train(data="digits", out=str(out), device="cpu", precision="fp32", seed=0)
    return out


@pytest.fixture(scope="session")
def cifar_model(tmp_path_factory, cifar_subset) -> Path:
    """A narrow fastnet trained on the CIFAR-10 subset for a few epochs (fp32, CPU), built once per session."""
    import gpuvision

    out = tmp_path_factory.mktemp("models") / "cifar"
    gpuvision.train(data=str(cifar_subset), out=str(out), device="cpu", precision="fp32", epochs=8, seed=0,
                    model_args={"widths": [32, 64, 64]}, eval_every=0, checkpoint_every=0)
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA GPU is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
