"""Data sets for the examples: scikit-learn's bundled digits (offline default) and CIFAR-10.

``load(name)`` returns a :class:`Dataset` of numpy arrays: images ``float32`` in
``[0, 1]`` with shape ``(N, H, W, C)``, labels ``int32``, split into a training and a
held-out validation set.

* ``"digits"`` (the default): the UCI optical-recognition handwritten digits, 1,797
  real 8x8 grayscale images of the digits 0-9, shipped inside the scikit-learn package
  (``sklearn.datasets.load_digits`` reads them from the installed package, never from
  the network). It is the one real image-classification set that installs with a common
  package and loads offline on a fresh machine, and it is small enough to train a
  population of CNNs on 2 CPU cores in a few minutes. A seeded, stratified 80/20 split
  gives 1,438 training and 359 validation images.
* ``"cifar10"``: CIFAR-10 through tensorflow-datasets (``tfds.data_source``, which reads
  the prepared ArrayRecord files without TensorFlow): its 50,000 ``train`` images, split
  as the digits are (seeded, stratified) into 45,000 for training and 5,000 (a tenth of
  each class) for validation, which the search selects on. The 10,000 ``test`` images
  are never read: they stay untouched for a final evaluation. The data must already be
  prepared in the TFDS data directory (``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``);
  preparing it the first time downloads it, which needs the network and TensorFlow
  (``pip install tensorflow``; then ``tfds build cifar10`` or
  ``tfds.builder("cifar10").download_and_prepare()``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

__all__ = ["DATASETS", "Dataset", "batches", "load"]

DATASETS = ("digits", "cifar10")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Training and validation arrays of one image-classification data set."""

    name: str
    train_images: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    train_labels: np.ndarray  # (N,) int32
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int


CIFAR10_VAL_FRACTION = 0.1  # of each class of its train split, held out for validation


def _stratified_split(labels: np.ndarray, fraction: float, seed: int, *, min_per_class: int = 0):
    """Indices of the training and the validation images: ``fraction`` of each class
    (at least ``min_per_class``) held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        cut = max(min_per_class, round(len(idx) * fraction))
        val.append(idx[:cut])
        train.append(idx[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def _load_digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    labels = digits.target.astype(np.int32)
    train, val = _stratified_split(labels, 0.2, seed)
    return Dataset("digits", images[train], labels[train], images[val], labels[val], 10)


def _tfds_split(name: str, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    try:  # (never a download here: preparing needs TensorFlow and the network)
        source = tfds.data_source(name, split=split, download=False)
    except KeyError as e:  # (tfds: "`splits` is empty ... not been generated yet")
        raise FileNotFoundError(
            f"--dataset {name}: the data is not prepared in the TFDS data directory "
            "(~/tensorflow_datasets, or $TFDS_DATA_DIR); prepare it once, with the network "
            'and TensorFlow: pip install tensorflow && python -c "import tensorflow_datasets '
            f"as tfds; tfds.builder('{name}').download_and_prepare()\""
        ) from e
    n = len(source) if limit is None else min(limit, len(source))
    records = [source[i] for i in range(n)]
    images = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
    labels = np.asarray([r["label"] for r in records], dtype=np.int32)
    return images, labels


def _load_cifar10(limit: int | None, seed: int) -> Dataset:
    try:  # (not the test split: selecting on it would leave no unseen images to report)
        images, labels = _tfds_split("cifar10", "train", limit)
    except ModuleNotFoundError as e:
        if e.name != "tensorflow_datasets":  # (tfds itself failed: preparing the data, say)
            raise
        raise ImportError(
            "--dataset cifar10 needs tensorflow-datasets: pip install 'jaxpop[examples]'"
        ) from e
    train, val = _stratified_split(labels, CIFAR10_VAL_FRACTION, seed, min_per_class=1)
    return Dataset("cifar10", images[train], labels[train], images[val], labels[val], 10)


def load(name: str = "digits", *, seed: int = 0, limit: int | None = None) -> Dataset:
    """Loads a data set by name (``"digits"`` or ``"cifar10"``).

    Args:
      name: which data set.
      seed: seeds the train/validation split (the examples keep the default: a run
        resumed with another seed must validate on the same images).
      limit: for CIFAR-10, read at most this many images of its train split (at least
        1), a tenth of each class of them held out for validation.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if name == "digits":
        return _load_digits(seed)
    if name == "cifar10":
        return _load_cifar10(limit, seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def load_for_example(name: str, *, limit: int | None = None) -> Dataset:
    """:func:`load` for an example's ``main``: data that is not there (CIFAR-10 not
    prepared, tensorflow-datasets not installed) ends the program with its message, as
    a bad flag does, not with a traceback through tensorflow-datasets."""
    try:
        return load(name, limit=limit)
    except (FileNotFoundError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None


def batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled mini-batches of exactly ``batch_size`` examples."""
    n = len(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the data set ({n})")
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield images[idx], labels[idx]
