"""Training and serving resize an image the same way.

The builder (`model_builder.data.preprocess_image`) and the agent (`device_agent.images.rgb_array`)
each carry the resize rule, because the agent installs without the builder. A model sees on the
device what it saw in training only if the two agree bit for bit, on every shape of image.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from device_agent.images import rgb_array
from model_builder.data import preprocess_image


@pytest.mark.parametrize(
    ("width", "height", "mode"),
    [
        (64, 64, "RGB"),  # already the model's size: untouched
        (200, 120, "RGB"),  # landscape: shorter side scaled, centre cropped
        (90, 301, "RGB"),  # portrait, odd sizes
        (33, 17, "RGB"),  # smaller than the model: scaled up
        (128, 128, "RGBA"),  # alpha dropped
        (97, 64, "L"),  # greyscale
        (640, 480, "P"),  # palette
    ],
)
def test_builder_and_agent_resize_identically(width: int, height: int, mode: str) -> None:
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    trained = preprocess_image(image, 64)
    served = rgb_array(image, 64)
    assert trained.shape == served.shape == (64, 64, 3) and trained.dtype == served.dtype == np.uint8
    assert np.array_equal(trained, served)
