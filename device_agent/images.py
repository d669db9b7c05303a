"""Image bytes → the (size, size, 3) uint8 RGB array that :func:`artifact.image_to_input` expects.

The resize rule is the builder's (`model_builder.data.preprocess_image`, which the agent may not
import): the shorter side is scaled to `size` with bilinear filtering, then the centre is cropped.
An image that already is `size`×`size` is not touched, so golden images reach the model bit-exact.
`tests/e2e/test_resize_rule.py` holds the two copies equal, bit for bit.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from .errors import BadImageError

FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 40_000_000  # a decompression bomb check: a 6000×6000 photo passes, a 100k×100k PNG does not


def open_image(data: bytes) -> Image.Image:
    """Decode PNG or JPEG bytes; 415 for anything else, 400 for a PNG/JPEG that does not decode."""
    if not data:
        raise BadImageError("the request body is empty; send the image file's bytes (PNG or JPEG)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            if image.width * image.height > MAX_PIXELS:
                raise BadImageError(f"image is {image.width}×{image.height}; at most {MAX_PIXELS:,} pixels", status=413)
            image.load()
    except UnidentifiedImageError as e:
        raise BadImageError("the body is not a PNG or JPEG image", status=415) from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImageError(f"the image could not be decoded: {e}") from e
    return image


def rgb_array(image: Image.Image, size: int) -> npt.NDArray[np.uint8]:
    """RGB, shorter side resized to `size`, centre-cropped: (size, size, 3) uint8."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (left, top, nw, nh) != (0, 0, size, size):
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def decode_rgb(data: bytes | Image.Image, size: int) -> npt.NDArray[np.uint8]:
    return rgb_array(data if isinstance(data, Image.Image) else open_image(data), size)
