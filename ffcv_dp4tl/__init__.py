"""ffcv-dp4tl: dataset pruning for transfer learning on FFCV betons and WebDataset shards."""
from .errors import DataError, DP4TLError, MaskError

__version__ = "0.1.0"
__all__ = ["DP4TLError", "DataError", "MaskError", "__version__"]
