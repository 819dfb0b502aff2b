"""What a convolution layer computes, written out in NumPy for reading, not for speed.

A convolution layer slides a small kernel (here 3x3) over the image. At every position it
multiplies the kernel with the patch of the image under it, element by element, and adds the
products up: one number per position. With no padding and stride 1, an H x W image and a
kH x kW kernel give an (H - kH + 1) x (W - kW + 1) result.

Strictly, sliding the kernel as it is written is a *cross-correlation*. A convolution in the
mathematical sense first flips the kernel (upside down and left to right). Deep-learning
libraries (``torch.nn.Conv2d``, ``torch.nn.functional.conv2d``) compute the cross-correlation
and call it convolution; since the kernel weights are learned, the flip would change nothing
but the learned weights' orientation. :func:`conv2d` below computes what PyTorch computes;
:func:`true_convolution2d` flips the kernel first, and the two differ in sign for an
antisymmetric kernel such as Sobel's.

Max-pooling then shrinks a feature map: :func:`max_pool2d` keeps the largest value of each
2x2 block, halving height and width.
"""

from __future__ import annotations

import numpy as np

# Classic 3x3 kernels. Sobel x responds to vertical edges (left-right changes in brightness),
# Sobel y to horizontal ones.
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
SOBEL_Y = SOBEL_X.T.copy()
BOX_BLUR = np.full((3, 3), 1.0 / 9.0)
SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float64)

CLASSIC_KERNELS: dict[str, np.ndarray] = {
    "Sobel x (vertical edges)": SOBEL_X,
    "Sobel y (horizontal edges)": SOBEL_Y,
    "box blur": BOX_BLUR,
    "sharpen": SHARPEN,
}


def conv2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Slide ``kernel`` over a 2-D ``image``: no padding, stride 1 (a cross-correlation, as conv2d layers compute).

    ``output[i, j] = sum over (u, v) of image[i + u, j + v] * kernel[u, v]``

    Args:
        image: 2-D array (H, W).
        kernel: 2-D array (kH, kW), no larger than the image.

    Returns:
        float64 array of shape (H - kH + 1, W - kW + 1).
    """
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"conv2d takes a 2-D image and a 2-D kernel, got shapes {image.shape} and {kernel.shape}")
    kernel_h, kernel_w = kernel.shape
    out_h, out_w = image.shape[0] - kernel_h + 1, image.shape[1] - kernel_w + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {kernel.shape} kernel does not fit in a {image.shape} image")
    output = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = image[i : i + kernel_h, j : j + kernel_w]  # the part of the image under the kernel
            output[i, j] = np.sum(patch * kernel)
    return output


def true_convolution2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolution in the mathematical sense: :func:`conv2d` with the kernel flipped in both directions."""
    return conv2d(image, np.flip(np.asarray(kernel), axis=(0, 1)))


def max_pool2d(feature_map: np.ndarray, size: int = 2) -> np.ndarray:
    """Keep the largest value of each ``size`` x ``size`` block (stride ``size``).

    Rows and columns that do not fill a whole block are dropped, as ``torch.nn.MaxPool2d`` does.
    """
    feature_map = np.asarray(feature_map)
    if feature_map.ndim != 2:
        raise ValueError(f"max_pool2d takes a 2-D array, got shape {feature_map.shape}")
    out_h, out_w = feature_map.shape[0] // size, feature_map.shape[1] // size
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {feature_map.shape} array is smaller than one {size}x{size} block")
    output = np.empty((out_h, out_w), dtype=feature_map.dtype)
    for i in range(out_h):
        for j in range(out_w):
            output[i, j] = feature_map[i * size : (i + 1) * size, j * size : (j + 1) * size].max()
    return output


def classic_example() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The textbook example: the 5x5 image 1..25 and the Sobel x kernel.

    Returns the image, the kernel, :func:`conv2d`'s result (every entry +8: each row of the
    image grows by 1 per column, so right minus left is 2, weighted 1 + 2 + 1) and the true
    convolution's (every entry -8, the flipped kernel subtracts right from left).
    """
    image = np.arange(1, 26, dtype=np.float64).reshape(5, 5)
    return image, SOBEL_X, conv2d(image, SOBEL_X), true_convolution2d(image, SOBEL_X)


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """An (H, W, 3) RGB image, integers in 0..255 (uint8) or floats in [0, 1], as (H, W) brightness in [0, 1]
    (ITU-R 601 luma weights)."""
    # By the type, not the values: a dark uint8 image of only 0s and 1s is not already in [0, 1].
    scale = 255.0 if np.issubdtype(np.asarray(rgb).dtype, np.integer) else 1.0
    return np.asarray(rgb, dtype=np.float64) / scale @ np.array([0.299, 0.587, 0.114])


def generated_image(size: int = 64) -> np.ndarray:
    """A generated grey image (size, size) in [0, 1] with vertical, horizontal and round edges and a gradient."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    image = 0.25 * cols  # a gentle left-to-right gradient
    image[(rows > 0.15) & (rows < 0.45) & (cols > 0.1) & (cols < 0.4)] = 0.9  # a square: straight edges
    disc = (rows - 0.65) ** 2 + (cols - 0.65) ** 2 < 0.2**2
    image[disc] = 0.6  # a disc: edges in every direction
    image[(rows > 0.8) & ((cols * 16).astype(int) % 2 == 0)] = 1.0  # stripes: fine detail for the blur
    return image


def _matrix(array: np.ndarray, indent: str = "  ") -> str:
    values = np.asarray(array)
    if np.allclose(values, np.round(values)):
        values = np.round(values).astype(int)
    return "\n".join(indent + line for line in np.array2string(values).splitlines())


def walkthrough_text() -> str:
    """The classic example worked through step by step, as text for a terminal."""
    image, kernel, correlation, convolution = classic_example()
    patch = image[:3, :3]
    terms = " + ".join(f"({int(k)})*{int(v)}" for k, v in zip(kernel.ravel(), patch.ravel(), strict=True))
    small = np.arange(1, 17).reshape(4, 4)
    return "\n".join([
        "A 5x5 image holding 1..25, row by row:",
        _matrix(image),
        "The Sobel x kernel (it responds to vertical edges: brightness changing from left to right):",
        _matrix(kernel),
        "Slide the kernel over the image, no padding, stride 1: it fits at 3x3 positions. At each, multiply",
        "the kernel with the 3x3 patch under it element by element and add the products. Top-left position:",
        f"  {terms} = {correlation[0, 0]:g}",
        "Cross-correlation, what torch.nn.Conv2d and conv2d() here compute:",
        _matrix(correlation),
        "The image grows by 1 per column everywhere, so right minus left is 2 in every row, weighted",
        "1 + 2 + 1 = 4 times: the same value at every position.",
        "True (mathematical) convolution flips the kernel first, so an antisymmetric kernel changes sign:",
        _matrix(convolution),
        "2x2 max-pooling keeps the largest value of each 2x2 block: the 4x4 image 1..16",
        _matrix(small),
        "becomes",
        _matrix(max_pool2d(small)),
    ])
