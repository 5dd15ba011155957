"""Converters from image datasets into FFCV betons + WebDataset shards (``dp4tl build``)."""
from .spec import DatasetSpec, Sample
from .writer import BuildOptions, BuildSummary, build_dataset

__all__ = ["BuildOptions", "BuildSummary", "DatasetSpec", "Sample", "build_dataset"]
