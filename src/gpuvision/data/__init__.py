"""The data path: source -> ImageSet (cached) -> Split -> DeviceLoader."""

from .imageset import ImageSet
from .sources import load_images
from .split import Split, make_split

__all__ = ["ImageSet", "Split", "load_images", "make_split"]
