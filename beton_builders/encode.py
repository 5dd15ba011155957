"""Turn one sample reference into clean RGB JPEG bytes, or a reason to reject it.

Every builder goes through :func:`encode_sample`, so grayscale/CMYK/palette/alpha/16-bit and PNG
inputs are all converted to RGB the same way, images are shrunk to ``max_side`` and re-encoded
at one JPEG quality. Unreadable or truncated files are not errors: they come back as a reject
reason and end up in ``rejects.txt``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .spec import ImageRef

# Refuse decompression bombs with a clear reason instead of a warning.
Image.MAX_IMAGE_PIXELS = 200_000_000

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


def _open(ref: ImageRef) -> Image.Image:
    if isinstance(ref, (str, Path)):
        img = Image.open(ref)
        return img
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
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = arr.min(), arr.max()
        arr = (arr - lo) / ((hi - lo) or 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def encode_sample(ref: ImageRef, max_side: int, quality: int) -> Encoded | str:
    """Return the encoded image, or a one-line reject reason."""
    try:
        img = _open(ref)
        if img.format == "JPEG" and max_side and max(img.size) > 2 * max_side:
            # DCT-domain downscaling: decodes large JPEGs several times faster.
            img.draft("RGB", (max_side, max_side))
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
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the file)"
    except Image.DecompressionBombError as e:
        return f"too large: {e}"
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"unreadable: {msg}"
