"""``dp4tl`` command line. Each module registers the commands of one concern on ``app``."""
from . import build as _build  # noqa: F401  (registers commands)
from . import bench as _bench  # noqa: F401
from . import bench_adversarial as _bench_adversarial  # noqa: F401
from . import catalog as _catalog  # noqa: F401
from . import evaluate as _evaluate  # noqa: F401
from . import masks as _masks  # noqa: F401
from . import pipeline as _pipeline  # noqa: F401
from . import prune as _prune  # noqa: F401
from . import train as _train  # noqa: F401
from . import verify as _verify  # noqa: F401
from .app import app, reflow_help, run

reflow_help(app)  # (every command is registered by now)

main = run
__all__ = ["app", "main"]
