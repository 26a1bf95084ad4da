"""The NumPy implementation against the textbook maths: gradients, stability, determinism.

The module runs a fused, in-place :func:`~impls.numpy_softmax.train_step`. The
plain textbook form is the oracle (``tests/oracles.py``: ``loss_and_grads``, then
``sgd_update``): finite differences check the oracle's gradient, and the
fused step must equal the oracle bit for bit. ``tests/test_torch.py`` and
``tests/test_jax.py`` hold autograd's gradients to the same oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from oracles import loss_and_grads, sgd_update

from impls import numpy_softmax as npsm
from impls.protocol import DeviceUnavailableError, Params
from impls.registry import train
from impls.training import fit, init_params


def random_params(rng: np.random.Generator, scale: float = 0.1) -> Params:
    return Params(
        rng.normal(0, scale, (784, 10)).astype(np.float32),
        rng.normal(0, scale, 10).astype(np.float32),
    )


def _mean_loss64(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
    """The batch's mean loss in float64, so finite differences are not swamped by rounding."""
    logits = images.astype(np.float64) @ params.weights.astype(np.float64) + params.bias
    return float(npsm.cross_entropy(logits, labels).mean())


# ------------------------------------------------------------------ maths


def test_oracle_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    images = rng.random((32, 784), dtype=np.float32)
    labels = rng.integers(0, 10, 32)
    params = random_params(rng)
    _, _, grads = loss_and_grads(params, images, labels)
    eps = 1e-4
    for name in ("weights", "bias"):
        value = getattr(params, name).astype(np.float64)
        flat_indices = rng.choice(value.size, size=min(25, value.size), replace=False)
        for flat in flat_indices:
            index = np.unravel_index(flat, value.shape)
            plus, minus = value.copy(), value.copy()
            plus[index] += eps
            minus[index] -= eps
            f_plus = _mean_loss64(params._replace(**{name: plus}), images, labels)
            f_minus = _mean_loss64(params._replace(**{name: minus}), images, labels)
            numeric = (f_plus - f_minus) / (2 * eps)
            analytic = float(getattr(grads, name)[index])
            assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-5), (name, index)


def test_train_step_is_bitwise_the_textbook_step():
    rng = np.random.default_rng(7)
    params = random_params(rng)
    work = npsm.Workspace(256)
    # Full and short batches, more steps than image buffers, all through one workspace.
    for n in (256, 96, 256, 256, 1):
        pixels = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        images = pixels.astype(np.float32) / np.float32(255)
        losses, logits, grads = loss_and_grads(params, images, labels)
        expected = sgd_update(params, grads, lr=0.1)
        stepped = Params(params.weights.copy(), params.bias.copy())
        loss_sum, correct = npsm.train_step(stepped, pixels, labels, 0.1, work)
        assert stepped.weights.tobytes() == expected.weights.tobytes()
        assert stepped.bias.tobytes() == expected.bias.tobytes()
        assert loss_sum == pytest.approx(float(losses.sum(dtype=np.float64)), rel=1e-6)
        assert correct == int((logits.argmax(axis=1) == labels).sum())
        params = expected


def test_train_step_is_finite_for_huge_logits():
    rng = np.random.default_rng(2)
    params = random_params(rng, scale=50.0)  # logits in the thousands: exp() overflows unshifted
    pixels = rng.integers(0, 256, (64, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    loss_sum, _ = npsm.train_step(params, pixels, labels, 0.1, npsm.Workspace(64))
    assert np.isfinite(loss_sum) and loss_sum > 1e3
    assert np.all(np.isfinite(params.weights)) and np.all(np.isfinite(params.bias))


@pytest.mark.parametrize(
    "magnitude", [1e4, -1e4, 80.0], ids=["plus-1e4", "minus-1e4", "exp-overflow"]
)
def test_cross_entropy_finite_for_extreme_logits(magnitude):
    logits = np.zeros((1, 10), dtype=np.float32)
    logits[0, :3] = [magnitude, 0.0, -magnitude]
    logits[0, 5] = magnitude * 0.5
    losses = npsm.cross_entropy(logits, np.array([2]))
    assert np.all(np.isfinite(losses))
    # exact answer: the largest logit minus the picked one (the others vanish in exp)
    assert losses[0] == pytest.approx(float(logits.max() - logits[0, 2]), rel=1e-6)


def test_equal_logits_give_the_loss_log10():
    logits = np.full((3, 10), 7.5, dtype=np.float32)
    np.testing.assert_allclose(
        npsm.cross_entropy(logits, np.array([0, 4, 9])), np.log(10), rtol=1e-6
    )


def test_maths_stays_float32():
    rng = np.random.default_rng(1)
    images = rng.random((8, 784), dtype=np.float32)
    logits = npsm.forward(random_params(rng), images)
    losses = npsm.cross_entropy(logits, rng.integers(0, 10, 8))
    assert logits.dtype == losses.dtype == np.float32


def test_count_correct_counts_argmax_hits():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    assert npsm.count_correct(logits, np.array([1, 1, 1])) == 2


# --------------------------------------------------------------- training


def test_same_seed_is_bitwise_identical(tiny_data, default_config):
    config = default_config.replace(epochs=2)
    first, trainer_a = train("numpy", tiny_data, config)
    second, trainer_b = train("numpy", tiny_data, config)
    assert [r.train_loss for r in first.records] == [r.train_loss for r in second.records]
    for a, b in zip(trainer_a.parameters(), trainer_b.parameters(), strict=True):
        assert a.tobytes() == b.tobytes()


def test_different_seed_changes_initial_weights_and_result(tiny_data, default_config):
    config = default_config.replace(epochs=1)
    assert not np.array_equal(
        init_params(config).weights, init_params(config.replace(seed=1)).weights
    )
    _, trainer_a = train("numpy", tiny_data, config)
    _, trainer_b = train("numpy", tiny_data, config.replace(seed=1))
    assert not np.array_equal(trainer_a.parameters().weights, trainer_b.parameters().weights)


def test_predict_and_evaluate_follow_the_parameters(tiny_data, default_config):
    _, trainer = train("numpy", tiny_data, default_config.replace(epochs=1))
    params = trainer.parameters()
    flat = tiny_data.test_images.reshape(len(tiny_data.test_images), -1).astype(np.float32) / 255
    expected = (flat @ params.weights + params.bias).argmax(axis=1)
    np.testing.assert_array_equal(trainer.predict(tiny_data.test_images), expected)
    assert trainer.evaluate().accuracy == pytest.approx(np.mean(expected == tiny_data.test_labels))


def test_rejects_a_device_other_than_cpu(tiny_data, default_config):
    with pytest.raises(DeviceUnavailableError, match="CPU only"):
        npsm.make_trainer(
            tiny_data, init_params(default_config), default_config.replace(device="cuda")
        )


def test_runtime_info_names_the_blas(tiny_data, default_config):
    trainer = npsm.make_trainer(tiny_data, init_params(default_config), default_config)
    assert trainer.runtime_info()["blas"]  # threadpoolctl found the BLAS it limits


@pytest.mark.slow
def test_default_ten_epochs_reach_the_seed_accuracy(real_data, default_config):
    trainer = npsm.make_trainer(real_data, init_params(default_config), default_config)
    history = fit(trainer, real_data, default_config, implementation="numpy")
    assert len(history.records) == 10
    assert history.final.test_accuracy >= 0.82
    assert history.records[0].train_loss > history.final.train_loss
