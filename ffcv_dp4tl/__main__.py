"""``python -m ffcv_dp4tl`` = the ``dp4tl`` command."""
from .cli import main

main()
