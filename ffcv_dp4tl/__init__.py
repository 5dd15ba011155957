"""ffcv-dp4tl: dataset pruning for transfer learning on FFCV betons and WebDataset shards."""
from .errors import DataError, DP4TLError, MaskError

__version__ = "0.1.0"  # the one place the version is set (pyproject.toml reads it)
__all__ = ["DP4TLError", "DataError", "MaskError", "__version__"]
