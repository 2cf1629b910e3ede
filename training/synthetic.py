"""Deterministic synthetic image-classification data: the project's bundled demo/test data.

Each class is a sinusoidal grating with its own orientation, frequency and colour, drawn with a
random phase, contrast and noise. A small MobileNet learns it in a few epochs on a CPU, so demos
and tests show real accuracy changes without downloading anything.
"""
from __future__ import annotations

import numpy as np


def make_images(num_samples: int, *, classes: int = 4, size: int = 64, seed: int = 0,
                noise: float = 24.0) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [num, size, size, 3], labels int32 [num])``, balanced classes, fixed by ``seed``."""
    if classes < 2:
        raise ValueError(f"classes={classes!r} is not allowed: it must be at least 2")
    if size < 8:
        raise ValueError(f"size={size!r} is not allowed: images must be at least 8 pixels")
    style = np.random.default_rng(1234)  # class appearance is the same for every seed
    angles = np.pi * np.arange(classes) / classes
    freqs = style.uniform(2.0, 5.0, classes)
    colours = style.uniform(0.3, 1.0, (classes, 3))
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_samples) % classes).astype(np.int32)
    rng.shuffle(labels)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    images = np.empty((num_samples, size, size, 3), np.uint8)
    for i, c in enumerate(labels):
        angle = angles[c] + rng.normal(0, 0.08)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freqs[c] * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        contrast = rng.uniform(50, 100)
        pixels = 127.5 + contrast * wave[:, :, None] * colours[c] + rng.normal(0, noise, (size, size, 3))
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels
