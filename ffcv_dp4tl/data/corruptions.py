"""Common corruptions at test time (CIFAR-10-C / ImageNet-C, Hendrycks & Dietterich, ICLR 2019).

The paper's Tab. A4 evaluates CIFAR-10 finetuned models on CIFAR-10-C. Instead of shipping a
second copy of the test split per corruption, a corruption here is a small operation object
applied to the *decoded* uint8 images of a target's test split as they are loaded
(:class:`CorruptedLoader` around any :class:`~.interface.MaskedLoader`), so every built target
has a "-C" version without rebuilding anything.

Each corruption is re-implemented in numpy / scipy / OpenCV / PIL from the definitions of the
benchmark's generator for CIFAR-10-C (``ImageNet-C/create_c/make_cifar_c.py`` of
hendrycks/robustness); the five severity parameters of every corruption are the published ones
of that file, cited beside each. Randomness is a function of (seed, corruption, severity, sample
index) only, so a sample is corrupted identically in every run, batch size, worker count and
loader format. Three of the 19 corruptions are not provided: *frost* blends photographs of
frost shipped with the benchmark (an external asset), and *snow* / *spatter* depend on
ImageMagick's motion blur and an OpenCV edge/distance pipeline whose output we could not check
against the published files. ``motion_blur`` is an own re-implementation of ImageMagick's
``MotionBlurImage`` (a one-sided Gaussian-weighted line kernel), close but not bit-identical.

The CIFAR-10-C parameters are for 32 px images (the embedded ``synth`` targets are 32 px too).
For a target read at a larger resolution (the paper protocol reads CIFAR-10 at 160 px),
``CorruptionOp(resolution=32)`` corrupts at 32 px — downsample, corrupt, upsample — which is
how CIFAR-10-C images reach a model that upsamples its input.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numba
import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ..contracts import check_seeds, split_items
from ..errors import DataError
from .sampling import Batch, check_resolution
from .transforms import NORMALIZATIONS

SEVERITIES = (1, 2, 3, 4, 5)

# ---------------------------------------------------------------------------------------------
# helpers (images are float64 HWC RGB in [0, 1] unless said otherwise)
# ---------------------------------------------------------------------------------------------


def _rgb2hsv(x: np.ndarray) -> np.ndarray:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0.0)
    d = np.where(delta > 0, delta, 1)
    h = np.where(v == r, (g - b) / d, np.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv2rgb(x: np.ndarray) -> np.ndarray:
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0):
    """skimage.filters.gaussian over the two spatial axes (channels kept apart)."""
    sig = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    if radius <= 8:
        ax, ksize = np.arange(-8, 9), (3, 3)
    else:
        ax, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(ax, ax)
    k = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    k /= k.sum()
    return cv2.GaussianBlur(k, ksize=ksize, sigmaX=alias_blur)


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    out = ndimage.zoom(img[top:top + ch, top:top + ch], (factor, factor, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim:trim + h, trim:trim + h]


def _plasma_fractal(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] (``mapsize`` a power of two)."""
    a = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled(arr):
        return arr / 4 + wibble * rng.uniform(-wibble, wibble, arr.shape)

    while step >= 2:
        half = step // 2
        corners = a[0:mapsize:step, 0:mapsize:step]
        sq = corners + np.roll(corners, -1, axis=0)
        sq = sq + np.roll(sq, -1, axis=1)
        a[half:mapsize:step, half:mapsize:step] = wibbled(sq)
        dr = a[half:mapsize:step, half:mapsize:step]
        ul = a[0:mapsize:step, 0:mapsize:step]
        a[0:mapsize:step, half:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=0)
                                                       + ul + np.roll(ul, -1, axis=1))
        a[half:mapsize:step, 0:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=1)
                                                       + ul + np.roll(ul, -1, axis=0))
        step //= 2
        wibble /= decay
    a -= a.min()
    return a / a.max()


def _motion_kernel_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick-style motion blur: a one-sided line of ``2*ceil(radius)+1`` taps along
    ``angle`` (degrees) with Gaussian weights exp(-i²/2σ²), edges clamped."""
    width = 2 * int(np.ceil(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    w = np.exp(-(i ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    th = np.deg2rad(angle)
    h, wd = x.shape[:2]
    yy, xx = np.mgrid[0:h, 0:wd]
    out = np.zeros_like(x)
    for k in range(width):
        dy, dx = int(round(i[k] * np.sin(th))), int(round(i[k] * np.cos(th)))
        out += w[k] * x[np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, wd - 1)]
    return out


@numba.njit(cache=False)
def _local_shuffle(x, offsets, delta):  # pragma: no cover - compiled
    """glass blur's sequential pixel "swaps", bottom-right to top-left (order matters), as the
    published generator really does them: ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy
    row views evaluates both right-hand views first, then writes ``x[h', w']`` into ``x[h, w]``
    and writes back into ``x[h', w']`` the view of ``x[h, w]``, which by then already holds
    ``x[h', w']``'s value. The net effect is a copy of the pixel at ``(h', w')`` onto ``(h, w)``,
    not a swap; CIFAR-10-C's images were made that way, so it is reproduced here
    (``tests/data/test_corruptions.py`` checks it against that numpy idiom)."""
    h, w = x.shape[0], x.shape[1]
    for it in range(offsets.shape[0]):
        for a, hh in enumerate(range(h - delta, delta, -1)):
            for b, ww in enumerate(range(w - delta, delta, -1)):
                hp, wp = hh + offsets[it, a, b, 1], ww + offsets[it, a, b, 0]
                for ch in range(x.shape[2]):
                    x[hh, ww, ch] = x[hp, wp, ch]


# ---------------------------------------------------------------------------------------------
# the corruptions: name -> (function(x, c, rng) -> image in [0, 1], the five published params)
# ---------------------------------------------------------------------------------------------

def gaussian_noise(x, c, rng):
    return x + rng.normal(size=x.shape, scale=c)


def shot_noise(x, c, rng):
    return rng.poisson(x * c) / c


def impulse_noise(x, c, rng):
    # skimage.util.random_noise(mode="s&p", amount=c): each value flipped with prob. c, half to 1
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def speckle_noise(x, c, rng):
    return x + x * rng.normal(size=x.shape, scale=c)


def gaussian_blur(x, c, rng):
    return _gaussian(x, c)


def glass_blur(x, c, rng):
    sigma, delta, iterations = c
    x = np.uint8(_gaussian(x, sigma) * 255)
    h, w = x.shape[:2]
    n_h, n_w = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    # offsets (dx, dy) in [-delta, delta) as the published np.random.randint(-d, d, size=(2,))
    offsets = rng.integers(-delta, delta, size=(iterations, n_h, n_w, 2))
    _local_shuffle(x, offsets, delta)
    return _gaussian(x / 255.0, sigma)


def defocus_blur(x, c, rng):
    k = _disk(*c)
    return np.stack([cv2.filter2D(x[..., d], -1, k) for d in range(3)], -1)


def motion_blur(x, c, rng):
    return _motion_kernel_blur(x, c[0], c[1], rng.uniform(-45, 45))


def zoom_blur(x, c, rng):
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for f in c:
        out += _clipped_zoom(x, f)
    return (x + out) / (len(c) + 1)


def fog(x, c, rng):
    h, w = x.shape[:2]
    size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
    max_val = x.max()
    x = x + c[0] * _plasma_fractal(size, c[1], rng)[:h, :w][..., None]
    return x * max_val / (max_val + c[0])


def contrast(x, c, rng):
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def brightness(x, c, rng):
    hsv = _rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _hsv2rgb(hsv)


def saturate(x, c, rng):
    hsv = _rgb2hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return _hsv2rgb(hsv)


def jpeg_compression(x, c, rng):
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255)).save(buf, "JPEG", quality=c)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255.0


def pixelate(x, c, rng):
    h, w = x.shape[:2]
    img = Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255))
    # at least 1 px: int(1 * 0.95) is 0 at a 1-px side, which PIL refuses (a traceback)
    img = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(img, dtype=np.float64) / 255.0


def elastic_transform(x, c, rng):
    h, w = x.shape[:2]
    size = min(h, w)
    alpha, sigma, affine = (f * size for f in c)
    x = x.astype(np.float32)
    center = np.float32((h, w)) // 2
    sq = size // 3
    pts1 = np.float32([center + sq, [center[0] + sq, center[1] - sq], center - sq])
    pts2 = pts1 + rng.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
    m = cv2.getAffineTransform(pts1, pts2)
    x = cv2.warpAffine(x, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = _gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
    dy = _gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
    yy, xx, zz = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    coords = [(yy + dy[..., None]).ravel(), (xx + dx[..., None]).ravel(), zz.ravel()]
    return ndimage.map_coordinates(x, coords, order=1, mode="reflect").reshape(x.shape)


@dataclass(frozen=True)
class Corruption:
    """One corruption type: ``fn(image, param, rng)`` and its five severity parameters.
    ``monotone``: the published parameters grow in strength with severity (saturate's and
    elastic's do not: severity 1-2 desaturate, 3-5 oversaturate; elastic trades affine for
    elastic strength)."""
    name: str
    fn: Callable[[np.ndarray, object, np.random.Generator], np.ndarray]
    params: tuple
    kind: str  # noise | blur | weather | digital (the benchmark's four groups)
    monotone: bool = True

    def __call__(self, image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        """uint8 HWC RGB → corrupted uint8 HWC RGB (clipped, truncated as the benchmark's
        ``np.uint8(...)``)."""
        x = np.asarray(image, dtype=np.float64) / 255.0
        out = self.fn(x, self.params[severity - 1], rng)
        return np.uint8(np.clip(out, 0, 1) * 255)


#: every provided corruption, in the benchmark's order (parameters: make_cifar_c.py)
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", gaussian_noise, (0.04, 0.06, .08, .09, .10), "noise"),
    Corruption("shot_noise", shot_noise, (500, 250, 100, 75, 50), "noise"),
    Corruption("impulse_noise", impulse_noise, (.01, .02, .03, .05, .07), "noise"),
    Corruption("defocus_blur", defocus_blur,
               ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), "blur"),
    Corruption("glass_blur", glass_blur,
               ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)), "blur",
               monotone=False),
    Corruption("motion_blur", motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)), "blur"),
    Corruption("zoom_blur", zoom_blur,
               tuple(tuple(np.arange(1, s, 0.01)) for s in (1.06, 1.11, 1.16, 1.21, 1.26)),
               "blur"),
    Corruption("fog", fog, ((.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)), "weather"),
    Corruption("brightness", brightness, (.05, .1, .15, .2, .3), "weather"),
    Corruption("contrast", contrast, (.75, .5, .4, .3, 0.15), "digital"),
    Corruption("elastic_transform", elastic_transform,
               ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                (0.1, 0.03, 0.03)), "digital", monotone=False),
    Corruption("pixelate", pixelate, (0.95, 0.9, 0.85, 0.75, 0.65), "digital"),
    Corruption("jpeg_compression", jpeg_compression, (80, 65, 58, 50, 40), "digital"),
    # the four extra corruptions of the benchmark (CIFAR-10-C's 19 = 15 + 4)
    Corruption("speckle_noise", speckle_noise, (.06, .1, .12, .16, .2), "noise"),
    Corruption("gaussian_blur", gaussian_blur, (.4, .6, 0.7, .8, 1), "blur"),
    Corruption("saturate", saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
               "digital", monotone=False),
)}
#: the five corruptions of the paper's Tab. A4
PAPER_TAB_A4 = ("gaussian_noise", "defocus_blur", "impulse_noise", "shot_noise", "speckle_noise")
_ALIASES = {"jpeg": "jpeg_compression", "elastic": "elastic_transform", "gaussian": "gaussian_noise",
            "shot": "shot_noise", "impulse": "impulse_noise", "speckle": "speckle_noise",
            "defocus": "defocus_blur", "glass": "glass_blur", "motion": "motion_blur",
            "zoom": "zoom_blur"}
NOT_PROVIDED = ("frost", "snow", "spatter")


def corruption(name: str) -> Corruption:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in CORRUPTIONS:
        why = (" (needs the benchmark's external frost photographs / ImageMagick; not provided)"
               if key in NOT_PROVIDED else "")
        raise DataError(f"unknown corruption {name!r}{why}; choose one of "
                        f"{', '.join(CORRUPTIONS)} (or `paper` for Tab. A4's five, `all`)")
    return CORRUPTIONS[key]


def parse_corruptions(specs: list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    """``["gaussian_noise:5", "fog", "paper"]`` → [(name, severity), ...]: ``NAME:S`` one
    severity (1-5), ``NAME`` all five; ``paper`` = Tab. A4's five, ``all`` = every corruption.
    Comma-separated items are split too. Order kept, duplicates dropped."""
    out: list[tuple[str, int]] = []
    for spec in specs:
        for item in split_items(str(spec), "--corrupt", DataError):
            name, _, sev = item.partition(":")
            if sev:
                try:
                    levels = (int(sev),)
                except ValueError:
                    levels = (-1,)
                if levels[0] not in SEVERITIES:
                    raise DataError(f"corruption {item!r}: severity must be one of 1-5")
            else:
                levels = SEVERITIES
            names = (PAPER_TAB_A4 if name.lower() == "paper" else tuple(CORRUPTIONS)
                     if name.lower() == "all" else (corruption(name).name,))
            for n in names:
                for s in levels:
                    if (n, s) not in out:
                        out.append((n, s))
    if not out:
        raise DataError(f"--corrupt {', '.join(map(repr, map(str, specs)))} names no corruption; "
                        "give NAME[:SEVERITY] (comma-separated), `paper` or `all`")
    return out


class CorruptionOp:
    """Corrupt a batch of decoded images: uint8 NHWC (numpy) + their sample indices → uint8
    NHWC. Sample ``i`` draws from ``default_rng([seed, crc32(name), severity, i])``, so its
    corruption does not depend on batching, order, workers or format. ``resolution``: corrupt
    at this side length (area-downsample, corrupt, bilinear-upsample back; e.g. 32 for
    CIFAR-10-C's parameters under a model read at 160 px); None: at the loaded size."""

    def __init__(self, name: str, severity: int, seed: int = 0, resolution: int | None = None):
        self.corruption = corruption(name)
        if severity not in SEVERITIES:
            raise DataError(f"corruption {name!r}: severity must be one of 1-5, got {severity}")
        seed = check_seeds([seed], "corruption seed", DataError)[0]
        if resolution is not None:
            resolution = check_resolution(resolution, "corruption resolution")
        self.name, self.severity, self.seed, self.resolution = self.corruption.name, severity, seed, resolution
        self._key = zlib.crc32(self.name.encode())

    def __repr__(self) -> str:
        return f"CorruptionOp({self.name}:{self.severity}, seed={self.seed})"

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._key, self.severity, int(index)])

    def one(self, image: np.ndarray, index: int) -> np.ndarray:
        h, w = image.shape[:2]
        r = self.resolution
        if r is None or (h, w) == (r, r):
            return self.corruption(image, self.severity, self.rng(index))
        small = np.asarray(Image.fromarray(image).resize((r, r), Image.BOX))
        out = self.corruption(small, self.severity, self.rng(index))
        return np.asarray(Image.fromarray(out).resize((w, h), Image.BILINEAR))

    def __call__(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"CorruptionOp takes uint8 NHWC RGB images, got {images.dtype} "
                            f"{tuple(images.shape)}")
        return np.stack([self.one(img, i) for img, i in zip(images, np.asarray(indices))])


class CorruptedLoader:
    """A test-time loader whose images are corrupted by ``op`` after decoding: wraps any
    :class:`~.interface.MaskedLoader` (ffcv, WebDataset, GPU decode) without touching it.

    The wrapped loader yields normalised float32 images (its AugSpec's statistics: ImageNet's by
    default); they are mapped back to the decoded uint8 pixels exactly (the normalisation is
    invertible at float32 precision, which
    ``tests/data/test_corruptions.py`` checks for all 256 levels), corrupted per sample, and
    normalised again. Single-view float32 loaders only (what evaluation uses)."""

    def __init__(self, loader, op: CorruptionOp):
        if getattr(loader, "views", 1) != 1:
            raise DataError("corruptions apply to single-view (evaluation) loaders")
        self.loader, self.op = loader, op
        # the statistics the wrapped loader normalised with (ImageNet's unless its AugSpec says)
        aug = getattr(loader, "aug", None)
        mean, std = NORMALIZATIONS[getattr(aug, "normalize", "imagenet")]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __getattr__(self, name):  # plan, aug, batch_size, set_epoch, resolution, ...
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            x = batch.images
            if x.dtype != torch.float32:
                raise DataError(f"corruptions need a float32 loader (got {x.dtype}); make the "
                                "loader with dtype=torch.float32")
            dev, mean, std = x.device, self.mean.to(x.device), self.std.to(x.device)
            u8 = (x.float() * std + mean).round().clamp_(0, 255).to(torch.uint8)
            nhwc = u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
            out = torch.from_numpy(self.op(nhwc, batch.indices.cpu().numpy())).to(dev)
            # the clean batch's layout (the permuted NHWC result is channels_last in memory:
            # the clean and corrupted passes then ran differently rounded convolutions)
            layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                      and not x.is_contiguous() else torch.contiguous_format)
            y = (out.permute(0, 3, 1, 2).contiguous(memory_format=layout).float() - mean) / std
            yield batch._replace(images=y)
