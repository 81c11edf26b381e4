"""What a source holds: classes, counts, image sizes, unreadable files and the split sizes training would use."""

from __future__ import annotations

from .sources import load_images
from .split import make_split


def inspect_source(src: str, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """The facts `data inspect` prints; `layout` is the parts the source gives (e.g. "train+val", or "flat")."""
    images = load_images(src)
    split = make_split(images, val_fraction, test_fraction, seed)
    return {
        "schema_version": 1,
        "source": images.source,
        "name": images.name,
        "fingerprint": images.fingerprint,
        "images": len(images),
        "classes": images.classes,
        "class_counts": images.class_counts(),
        "image_shape": list(images.image_shape),
        "native_sizes": images.native_sizes,
        "given_test_split": images.has_given_test,
        "layout": images.layout,
        "skipped": images.skipped,
        "split_sizes": split.sizes(),
        "val_source": split.val_source,
        "test_source": split.test_source,
    }
