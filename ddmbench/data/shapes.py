"""Image shapes: (channels, height, width) of a dataset's images, and the shape a network was built for.

A leaf module (no ddmbench imports) so that the sampling core (``field``, ``sampling``) can ask a model
for its shape without depending on the data or network modules."""

from __future__ import annotations

ImageShape = tuple[int, int, int]  # (C, H, W)

MNIST_SHAPE: ImageShape = (1, 28, 28)   # MNIST and Fashion-MNIST
CIFAR_SHAPE: ImageShape = (3, 32, 32)   # CIFAR-10


def image_shape_of(model: object, default: ImageShape = MNIST_SHAPE) -> ImageShape:
    """The (C, H, W) a network was built for (its ``image_shape`` attribute); ``default`` for callables that
    do not say (toy fields in tests, and checkpoints written before ddmbench recorded the shape: 1x28x28)."""
    shape = getattr(model, "image_shape", None)
    if shape is None:
        return default
    c, h, w = (int(d) for d in shape)
    return c, h, w
