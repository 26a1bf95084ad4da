"""Square resizing of uint8 images, bit for bit what torchvision's ``Resize(size)`` gives.

torchvision resizes a PIL image with PIL's antialiased bilinear filter
(``Image.resize(..., BILINEAR)``), the book's ``transforms.Resize``. PIL
computes it in two separable passes, horizontal then vertical, each in fixed
point: every weight is rounded to an integer of :data:`PRECISION_BITS` fractional
bits, each output is the rounded, clipped integer sum, **and the horizontal
pass's output is rounded to uint8 before the vertical pass reads it**. This
module computes the same integers: the coefficients the way PIL's
``precompute_coeffs`` and ``normalize_coeffs_8bpc`` make them, in the same
double-precision steps, and each pass as one float64 matrix product whose
operands are integers small enough (below 2**53) for every sum to be exact.
NumPy only.
"""

from __future__ import annotations

import math

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # PIL's fixed point for 8-bit images (Resample.c)
_ONE = float(1 << PRECISION_BITS)
_HALF = float(1 << (PRECISION_BITS - 1))
BLOCK = 1024  # images per pass: bounds the float64 temporaries (about 100 MB each at 112)


def _bilinear(x: float) -> float:
    """PIL's bilinear (triangle) filter."""
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def pil_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) fixed-point weights of PIL's antialiased bilinear resampling, as float64 integers.

    Mirrors PIL's ``precompute_coeffs`` (support 1, widened by the scale when
    shrinking: the antialiasing) step by step in double precision, then
    ``normalize_coeffs_8bpc``'s rounding to :data:`PRECISION_BITS` bits.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    inverse = 1.0 / filterscale
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)  # int(): C's truncation toward zero
        stop = min(int(center + support + 0.5), in_size)
        taps = [_bilinear((x - center + 0.5) * inverse) for x in range(first, stop)]
        total = 0.0
        for tap in taps:  # summed in PIL's order
            total += tap
        for offset, tap in enumerate(taps):
            value = tap / total if total != 0.0 else tap
            # C's (int)(0.5 + v * 2**22), or (int)(-0.5 + ...) for a negative v: round half away
            weights[out, first + offset] = math.trunc(value * _ONE + math.copysign(0.5, value))
    return weights


def _pass(images: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One of PIL's passes along ``axis`` (2: horizontal, 1: vertical), rounded and clipped.

    Each pass is one large matrix product over every image of the block (many small
    per-image products would be several times slower).
    """
    count, height, width = images.shape
    if axis == 2:
        sums = (images.reshape(count * height, width) @ weights.T).reshape(count, height, -1)
    else:
        stacked = images.transpose(1, 0, 2).reshape(height, count * width)
        sums = (weights @ stacked).reshape(-1, count, width).transpose(1, 0, 2)
    sums += _HALF
    # The sums are exact integers: dividing by 2**22 is exact and floor is PIL's >> 22.
    np.floor(sums / _ONE, out=sums)
    return np.clip(sums, 0, 255, out=sums)


def check_size(size: object) -> int:
    """``size`` as a side length, or a ValueError saying it must be a positive integer."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"resize must be a positive whole side length, got {size!r}")
    return int(size)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Square-resize uint8 images (N, H, W) to (N, size, size), bit for bit torchvision's
    ``Resize(size)`` on PIL images (PIL's bilinear filter, antialiased), up or down."""
    size = check_size(size)
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"resize_images takes uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    count, height, width = images.shape
    if (height, width) == (size, size):
        return images.copy()  # torchvision returns the image unchanged
    columns = pil_coefficients(width, size)
    rows = pil_coefficients(height, size)
    out = np.empty((count, size, size), dtype=np.uint8)
    for start in range(0, count, BLOCK):
        block = images[start : start + BLOCK].astype(np.float64)
        # PIL skips a pass that would not change that side; a square target changes both
        # sides of a non-square image, so only the square-to-same-size case returns above.
        across = _pass(block, columns, axis=2) if width != size else block
        out[start : start + BLOCK] = _pass(across, rows, axis=1) if height != size else across
    return out
