"""WebDataset shards with a random-access index.

Shards are plain POSIX tars (readable by ``tar`` and ``webdataset.WebDataset``) holding
``KEY.jpg`` and ``KEY.cls`` per sample, where KEY is the sample's zero-padded ordinal in the
source listing. Members have fixed mtime/owner so equal inputs give byte-identical shards.
After writing, the tar headers are re-read to record where every ``.jpg`` payload starts, which
is what makes masked, random-access reads possible without scanning a shard.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from .encode import Encoded, encode_sample
from .spec import Sample

KEY_DIGITS = 9


def sample_key(ordinal: int) -> str:
    return f"{ordinal:0{KEY_DIGITS}d}"


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def write_shard(
    path: Path, samples: list[Sample], first_ordinal: int, max_side: int, quality: int
) -> dict:
    """Encode ``samples`` into the tar at ``path`` (written in place; caller renames).

    Returns the shard's metadata: accepted samples (key, label, offset, size, sha1, h, w) and
    rejects (name, reason).
    """
    records: list[dict] = []
    rejects: list[list[str]] = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, sample in enumerate(samples):
            ordinal = first_ordinal + i
            result = encode_sample(sample.ref, max_side, quality)
            if not isinstance(result, Encoded):
                rejects.append([sample.display_name(), result])
                continue
            key = sample_key(ordinal)
            _add(tar, f"{key}.jpg", result.jpeg)
            _add(tar, f"{key}.cls", str(int(sample.label)).encode())
            records.append({
                "key": ordinal,
                "label": int(sample.label),
                "sha1": hashlib.sha1(result.jpeg).hexdigest(),
                "height": result.height,
                "width": result.width,
            })
    offsets = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                offsets[int(member.name[:-4])] = (member.offset_data, member.size)
    for rec in records:
        rec["offset"], rec["size"] = offsets[rec["key"]]
    return {"samples": records, "rejects": rejects}
