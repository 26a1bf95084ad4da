"""The seed's two pictures: training curves (``Animator``) and predictions (``predict_ch3``).

matplotlib is imported inside the functions (Agg backend, no screen needed): it
is an optional dependency (``fmbench[cli]``). Every figure is written atomically
(:func:`impls.files.write_atomically`), by ``fmbench train`` and by the report alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from impls.data import class_names
from impls.files import write_atomically

PREDICTION_COUNT = 18  # test images in a predictions grid: the CLI's and the report's

if TYPE_CHECKING:
    from impls.training import History


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a clear install hint."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "figures need matplotlib, which is not installed: pip install 'fmbench[cli]' "
            "(or 'fmbench[bench]' for reports)"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: History, path: str | Path) -> Path:
    """Train loss, train accuracy and test accuracy against epoch, like the seed's ``Animator``."""
    plt = pyplot()
    epochs = history.column("epoch")
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    ax.plot(epochs, history.column("train_loss"), "-", label="train loss")
    ax.plot(epochs, history.column("train_accuracy"), "m--", label="train acc")
    ax.plot(epochs, history.column("test_accuracy"), "g-.", label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(epochs[-1], 2))
    ax.set_ylim(0.3, 0.9)
    ax.grid(True, alpha=0.4)
    ax.legend(loc="center right")
    ax.set_title(
        f"{history.implementation or 'training'}: final test acc {history.final.test_accuracy:.3f}"
    )
    return save_figure(fig, path)


def plot_predictions(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    path: str | Path,
    count: int = PREDICTION_COUNT,
    columns: int = 6,
) -> Path:
    """The first ``count`` images titled "true / predicted", wrong ones in red (``predict_ch3``)."""
    plt = pyplot()
    count = min(count, len(images))
    rows = -(-count // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.9 * rows), layout="constrained"
    )
    axes = np.atleast_1d(axes).ravel()
    trues, preds = class_names(labels[:count]), class_names(predictions[:count])
    for ax, image, true, pred in zip(axes, images[:count], trues, preds, strict=True):
        ax.imshow(image, cmap="gray_r")
        ax.set_title(f"{true}\n{pred}", fontsize=8, color="black" if true == pred else "red")
    for ax in axes:
        ax.axis("off")
    fig.suptitle("true class / predicted class", fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (creating folders, atomically) and close it."""
    try:
        return write_atomically(path, lambda file: fig.savefig(file, format="png", dpi=110))
    finally:
        pyplot().close(fig)
