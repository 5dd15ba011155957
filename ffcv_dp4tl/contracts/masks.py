"""Index mask sidecar (``NAME.json`` beside a mask's ``NAME.npy``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import MaskError
from .fields import typed
from .versions import check_version

@dataclass(frozen=True)
class MaskMeta:
    """``NAME.json`` beside a mask's ``NAME.npy``: which split of which dataset it indexes (by
    content fingerprint) and how it was made (``provenance``: method, ratio, scores, ...)."""

    VERSION: ClassVar[int] = 1
    #: fields of the file that are not provenance
    FIELDS: ClassVar[tuple[str, ...]] = ("split", "fingerprint", "num_samples", "num_kept",
                                         "created", "indices_sha256")

    fingerprint: str | None
    split: str | None = None
    num_samples: int | None = None
    num_kept: int | None = None
    created: str | None = None
    #: sha256 of the .npy's int64 indices (``save_mask``; absent in masks saved before it): an
    #: edited or replaced .npy of the same length no longer matches its description
    indices_sha256: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        """The sidecar's flat dict (the shape ``IndexMask.meta`` has always had)."""
        d: dict[str, Any] = {"format_version": self.format_version}
        for k in self.FIELDS:
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return {**d, **self.provenance}

    @classmethod
    def from_json(cls, data: Any, source: object = "mask metadata",
                  require_fingerprint: bool = True) -> "MaskMeta":
        if not isinstance(data, dict) or (require_fingerprint and data.get("fingerprint") is None):
            # (a null one switched the check against the dataset off)
            raise MaskError(f"{source} lacks field 'fingerprint'; recompute the mask")
        version = check_version(data, cls.VERSION, "mask", source, error=MaskError)

        def get(key: str, kind: str) -> Any:
            return typed(data, key, kind, source, "recompute the mask", None, error=MaskError)
        return cls(fingerprint=get("fingerprint", "str"), split=get("split", "str"),
                   num_samples=get("num_samples", "count"), num_kept=get("num_kept", "count"),
                   created=get("created", "str"), indices_sha256=get("indices_sha256", "str"),
                   format_version=version,
                   provenance={k: v for k, v in data.items()
                               if k not in cls.FIELDS and k != "format_version"})
