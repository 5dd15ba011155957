"""Turn one sample reference into clean RGB JPEG bytes, or a reason to reject it.

Every builder goes through :func:`encode_sample`, so grayscale/CMYK/palette/alpha/16-bit and PNG
inputs are all converted to RGB the same way, images are shrunk to ``max_side`` and re-encoded
at one JPEG quality. Unreadable or truncated files are not errors: they come back as a reject
reason and end up in ``rejects.txt``.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .spec import ImageRef

# Refuse decompression bombs with a clear reason instead of a warning.
Image.MAX_IMAGE_PIXELS = 200_000_000
#: Memory one decoded input may take, as RGB (width x height x 3 bytes; JPEGs after DCT-domain
#: shrinking). PIL's pixel limit alone lets a 48 KB 1-bit PNG of 19999^2 px through (it only
#: warns below twice the limit) and converting it to RGB takes 3 GB in a worker; every mode is
#: bounded by what it becomes. 600 MB = the pixel limit for an RGB photo.
MAX_DECODE_BYTES = 3 * Image.MAX_IMAGE_PIXELS

#: Shorter side (after shrinking to max_side) below which an image is rejected. ffcv's decoders
#: abort the whole process (an OpenCV assertion, SIGABRT) on a 1-pixel-wide image in a centre
#: crop, naming no sample; padding such slivers would teach the model borders, not content.
#: So they are listed in rejects.txt instead, like unreadable files.
MIN_SIDE = 8


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    height: int
    width: int


class NotRegularFile(Exception):
    """An input path that is a FIFO, socket or device: opening it could block forever."""


def _open_regular(path: str | Path, stack: contextlib.ExitStack):
    """Open ``path`` for reading only if it is a regular file (after symlinks). The open itself
    never blocks: O_NONBLOCK makes a FIFO without a writer return at once, and the descriptor's
    own fstat decides (no race between a check and the open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
            raise NotRegularFile(f"not a regular file ({kind}); only regular files are read")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return stack.enter_context(os.fdopen(fd, "rb"))


def _open(ref: ImageRef, stack: contextlib.ExitStack | None = None) -> Image.Image:
    if isinstance(ref, (str, Path)):
        if stack is None:
            stack = contextlib.ExitStack()
        return Image.open(_open_regular(ref, stack))
    if isinstance(ref, np.ndarray):
        if ref.dtype != np.uint8 or ref.ndim not in (2, 3):
            raise ValueError(f"in-memory image must be uint8 HW or HWC, got {ref.dtype} {ref.shape}")
        return Image.fromarray(ref)
    if callable(ref):
        return ref()
    raise TypeError(f"unsupported image reference {type(ref).__name__}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit samples (PNG, TIFF) on the fixed scale value / 257, as OpenCV and other tools
        # read them and as 16-bit RGB arrives: a per-image stretch to the brightest pixel made a
        # flat mid-grey white, and one hot pixel darkened the rest. 32-bit integers ("I" beyond
        # 0..65535) have no fixed range: stretched from their minimum to their maximum.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            return _gray_to_rgb(_stretched(arr))
        return _gray_to_rgb(arr / 257.0)
    if img.mode == "F":
        # Floats in [0, 1] (the usual float image convention: TIFF, skimage, OpenCV) on the
        # fixed scale value * 255, so a dark image stays dark; any other range has no fixed
        # scale and is stretched. NaN and infinite pixels (no-data in float TIFFs) read as 0.
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            raise ValueError("float image has no finite pixel (all NaN or infinite)")
        values = arr[finite]
        if values.min() >= 0.0 and values.max() <= 1.0:
            scaled = arr * 255.0
        else:
            scaled = _stretched(arr, values)
        return _gray_to_rgb(np.where(finite, scaled, 0.0))
    return img.convert("RGB")


def _stretched(arr: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """``arr`` stretched from the minimum to the maximum of ``values`` (default: ``arr``) onto
    0..255. A constant image has no range to stretch: it is mid-grey (128), not black, which a
    division by a zero range made it (a blank tile is not a black one)."""
    values = arr if values is None else values
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.full(arr.shape, 128.0)
    return (arr - lo) / (hi - lo) * 255.0


def _gray_to_rgb(arr: np.ndarray) -> Image.Image:
    """One channel of values on 0..255 (rounded, clipped) as an RGB image."""
    return Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8)).convert("RGB")


def encode_sample(ref: ImageRef, max_side: int, quality: int) -> Encoded | str:
    """Return the encoded image, or a one-line reject reason."""
    try:
        with contextlib.ExitStack() as stack, warnings.catch_warnings():
            # PIL warns between one and two times its pixel limit; MAX_DECODE_BYTES decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _encode(ref, max_side, quality, stack)
    except NotRegularFile as e:
        return str(e)
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the file)"
    except Image.DecompressionBombError as e:
        return f"too large: {e}"
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"unreadable: {msg}"


def _encode(ref: ImageRef, max_side: int, quality: int, stack: contextlib.ExitStack) -> Encoded | str:
    """:func:`encode_sample` without the error mapping (``stack`` closes the input file)."""
    img = _open(ref, stack)
    if img.format == "JPEG" and max_side and max(img.size) > 2 * max_side:
        # DCT-domain downscaling: decodes large JPEGs several times faster.
        img.draft("RGB", (max_side, max_side))
    w, h = img.size
    if w * h * 3 > MAX_DECODE_BYTES:  # checked on the header, before any pixel is decoded
        return (f"too large to decode: {w}x{h} px would take {w * h * 3 / 2**20:,.0f} MiB as RGB "
                f"(limit {MAX_DECODE_BYTES / 2**20:,.0f} MiB per image)")
    img.load()
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = to_rgb(img)
    w, h = img.size
    if w == 0 or h == 0:
        return "empty image (0 pixels)"
    scale = max_side / max(w, h) if max_side else 1.0
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.BILINEAR, reducing_gap=3.0)
    if min(img.size) < MIN_SIDE:
        return (f"too small: {w}x{h} px (shorter side {min(img.size)} px after resizing, "
                f"minimum {MIN_SIDE}); ffcv's decoders cannot crop it")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Encoded(buf.getvalue(), img.size[1], img.size[0])
