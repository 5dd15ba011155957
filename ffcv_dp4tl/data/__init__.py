"""Data layer: manifests, index masks and masked loaders for betons and WebDataset shards."""
from .gpu_decode import DeviceDecodeLoader
from .loaders import MaskedLoader, make_loader
from .manifest import Manifest, SplitInfo, load_manifest
from .masks import (IndexMask, as_mask, full_mask, load_mask, make_mask, mask_from_classes, save_mask,
                    val_mask_of, validate_mask)
from .sampling import Batch, EpochPlan
from .transforms import AugSpec

__all__ = ["AugSpec", "Batch", "DeviceDecodeLoader", "EpochPlan", "IndexMask",
           "Manifest", "MaskedLoader", "SplitInfo", "as_mask", "full_mask", "load_manifest", "load_mask",
           "make_loader", "make_mask", "mask_from_classes", "save_mask", "val_mask_of",
           "validate_mask"]
