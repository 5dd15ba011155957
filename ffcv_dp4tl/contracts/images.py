"""What an image may be asked for: the largest side in pixels and the normalisations a loader
applies. Constants that recipes, options and loaders all check against, here so that reading
a recipe (``dp4tl recipes``, a pipeline's up-front checks) imports neither torch nor a loader.
"""
from __future__ import annotations

import numbers
from typing import Any

from ..errors import DataError

#: the largest image side (pixels) a loader, a recipe or an option may ask for: far above any
#: protocol's (the paper: 224; ffcv-imagenet's val_res 256), far below what would exhaust memory
#: in a loader's batch buffers (a resolution of 100000 asked for 38 TB)
MAX_RESOLUTION = 2048

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
#: CIFAR-10's channel statistics as the authors' released CIFAR loader normalises with
#: (`src/data/cifar10.py`: ``Normalize(mean=[0.4914, 0.4822, 0.4465], std=[0.247, 0.243, 0.261])``)
CIFAR10_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR10_STD = (0.247 * 255, 0.243 * 255, 0.261 * 255)
#: the normalisations a loader can apply (``AugSpec.normalize``), per-channel (mean, std) on 0-255
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}


def check_resolution(value: Any, what: str, *, zero: str | None = None) -> int:
    """An image side in pixels (a loader's ``resolution``, also when ``set_epoch`` changes it;
    a recipe's or an option's): an integer in [1, MAX_RESOLUTION], or 0 where ``zero`` says what
    0 means; a bool, a float or a string is none. Checked before any worker runs: 0 crashed
    ffcv's decoders (an OpenCV abort), the WebDataset loader blamed the data, and 100000 was a
    torch allocation traceback."""
    low = 0 if zero else 1
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not low <= value <= MAX_RESOLUTION):
        meaning = f" (0 = {zero})" if zero else ""
        raise DataError(f"{what} must be an integer number of pixels from {low} to "
                        f"{MAX_RESOLUTION}{meaning}, got {value!r}")
    return int(value)
