"""Data layer: manifests, index masks and masked loaders for betons and WebDataset shards."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: exported name -> the module that defines it (imported on first use: ffcv_dp4tl.lazy)
_EXPORTS = {
    "as_mask": ".masks",
    "AugSpec": ".transforms",
    "Batch": ".sampling",
    "DeviceDecodeLoader": ".gpu_decode",
    "EpochPlan": ".sampling",
    "full_mask": ".masks",
    "IndexMask": ".masks",
    "load_manifest": ".manifest",
    "load_mask": ".masks",
    "make_loader": ".loaders",
    "make_mask": ".masks",
    "Manifest": ".manifest",
    "mask_from_classes": ".masks",
    "MaskedLoader": ".loaders",
    "save_mask": ".masks",
    "SplitInfo": ".manifest",
    "val_mask_of": ".masks",
    "validate_mask": ".masks",
}

if TYPE_CHECKING:  # (for type checkers and editors; at run time: __getattr__)
    from .gpu_decode import DeviceDecodeLoader
    from .loaders import MaskedLoader, make_loader
    from .manifest import Manifest, SplitInfo, load_manifest
    from .masks import (IndexMask, as_mask, full_mask, load_mask, make_mask, mask_from_classes, save_mask,
                        val_mask_of, validate_mask)
    from .sampling import Batch, EpochPlan
    from .transforms import AugSpec

__all__ = ["AugSpec", "Batch", "DeviceDecodeLoader", "EpochPlan", "IndexMask", "Manifest",
           "MaskedLoader", "SplitInfo", "as_mask", "full_mask", "load_manifest", "load_mask",
           "make_loader", "make_mask", "mask_from_classes", "save_mask", "val_mask_of",
           "validate_mask"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
