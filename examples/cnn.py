"""The model, augmentation and loss shared by the CNN examples.

A small flax CNN whose global average pooling makes it fit both 8x8 digits and 32x32
CIFAR-10 images, data augmentation written with ``jax.numpy`` whose strengths are traced
arguments (so evolving them never recompiles), and a label-smoothed cross-entropy.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

__all__ = ["CNN", "MLP", "MODELS", "accuracy", "augment", "cross_entropy"]


class CNN(nn.Module):
    """Two 3x3 convolutions, global average pooling and a linear classifier."""

    num_classes: int = 10
    features: tuple[int, ...] = (32, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for f in self.features:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """The flattened image, one hidden layer of 128 (vectorizes well on CPU, unlike convs)."""

    num_classes: int = 10
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(x)))


MODELS = {"cnn": CNN, "mlp": MLP}


def _gray(images: jax.Array) -> jax.Array:
    weights = jnp.asarray([0.299, 0.587, 0.114], images.dtype)
    return jnp.sum(images * weights, axis=-1, keepdims=True)


def _rotate_hue(images: jax.Array, angle: jax.Array) -> jax.Array:
    # rotate the chroma plane of YIQ space by `angle` (radians), per image
    to_yiq = jnp.asarray(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], images.dtype
    )
    yiq = images @ to_yiq.T
    cos, sin = jnp.cos(angle)[:, None, None], jnp.sin(angle)[:, None, None]
    i, q = yiq[..., 1] * cos - yiq[..., 2] * sin, yiq[..., 1] * sin + yiq[..., 2] * cos
    yiq = jnp.stack([yiq[..., 0], i, q], axis=-1)
    return yiq @ jnp.linalg.inv(to_yiq).T


def augment(images: jax.Array, key: jax.Array, strengths: Mapping[str, jax.Array]) -> jax.Array:
    """Random photometric augmentation of a batch ``(N, H, W, C)`` of images in [0, 1].

    ``strengths`` may hold ``"brightness"`` (max absolute shift), ``"contrast"`` and
    ``"saturation"`` (max relative change: the factor is drawn from ``[1 - s, 1 + s]``)
    and ``"hue"`` (max rotation, as a fraction of a full turn). Each image gets its own
    random draw. Hue and saturation act on colour images only (they are the identity on
    grayscale data). Strengths are traced values: changing them never recompiles.
    """
    n = images.shape[0]
    keys = dict(
        zip(("brightness", "contrast", "saturation", "hue"), jax.random.split(key, 4), strict=True)
    )

    def factor(name):
        s = jnp.asarray(strengths.get(name, 0.0), images.dtype)
        return jax.random.uniform(keys[name], (n, 1, 1, 1), images.dtype, -1.0, 1.0) * s

    if "contrast" in strengths:
        mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
        images = (images - mean) * (1.0 + factor("contrast")) + mean
    if "brightness" in strengths:
        images = images + factor("brightness")
    if images.shape[-1] == 3:
        if "saturation" in strengths:
            gray = _gray(images)
            images = gray + (images - gray) * (1.0 + factor("saturation"))
        if "hue" in strengths:
            images = _rotate_hue(images, 2 * jnp.pi * factor("hue")[:, 0, 0, 0])
    return jnp.clip(images, 0.0, 1.0)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: jax.Array | float = 0.0
) -> jax.Array:
    """Mean softmax cross-entropy against (optionally smoothed) one-hot labels."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)
