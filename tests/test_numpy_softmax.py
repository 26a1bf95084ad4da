"""The NumPy implementation: hand-written gradients, stable maths, determinism, accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from impls import numpy_softmax as npsm
from impls.protocol import Params
from impls.training import fit, init_params, train


def _random_params(rng: np.random.Generator, scale: float = 0.1) -> Params:
    return Params(
        rng.normal(0, scale, (784, 10)).astype(np.float32),
        rng.normal(0, scale, 10).astype(np.float32),
    )


def _mean_loss64(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
    """The batch's mean loss in float64, so finite differences are not swamped by rounding."""
    logits = images.astype(np.float64) @ params.weights.astype(np.float64) + params.bias
    return float(npsm.cross_entropy(logits, labels).mean())


def test_hand_written_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    images = rng.random((32, 784), dtype=np.float32)
    labels = rng.integers(0, 10, 32)
    params = _random_params(rng)
    _, _, grads = npsm.loss_and_grads(params, images, labels)
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


def test_losses_and_grads_are_float32():
    rng = np.random.default_rng(1)
    losses, logits, grads = npsm.loss_and_grads(
        _random_params(rng), rng.random((8, 784), dtype=np.float32), rng.integers(0, 10, 8)
    )
    assert {losses.dtype, logits.dtype, grads.weights.dtype, grads.bias.dtype} == {
        np.dtype(np.float32)
    }


@pytest.mark.parametrize(
    "magnitude", [1e4, -1e4, 80.0], ids=["plus-1e4", "minus-1e4", "exp-overflow"]
)
def test_softmax_and_loss_finite_for_extreme_logits(magnitude):
    logits = np.array([[magnitude, 0.0, -magnitude] + [0.0] * 7], dtype=np.float32) * np.float32(
        [[1] * 10]
    )
    logits[0, 5] = magnitude * 0.5
    probs = npsm.softmax(logits)
    assert np.all(np.isfinite(probs))
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    losses = npsm.cross_entropy(logits, np.array([2]))
    assert np.all(np.isfinite(losses))
    # exact answer: the largest logit minus the picked one (the others vanish in exp)
    assert losses[0] == pytest.approx(float(logits.max() - logits[0, 2]), rel=1e-6)


def test_equal_logits_give_uniform_probabilities_and_log10_loss():
    logits = np.full((3, 10), 7.5, dtype=np.float32)
    np.testing.assert_allclose(npsm.softmax(logits), 0.1, rtol=1e-6)
    np.testing.assert_allclose(
        npsm.cross_entropy(logits, np.array([0, 4, 9])), np.log(10), rtol=1e-6
    )


def test_sgd_update_moves_against_the_gradient():
    params = Params(np.ones((784, 10), np.float32), np.zeros(10, np.float32))
    grads = Params(np.full((784, 10), 2, np.float32), np.full(10, -1, np.float32))
    updated = npsm.sgd_update(params, grads, lr=0.5)
    np.testing.assert_array_equal(updated.weights, 0.0)
    np.testing.assert_array_equal(updated.bias, 0.5)


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
    with pytest.raises(ValueError, match="CPU only"):
        npsm.make_trainer(
            tiny_data, init_params(default_config), default_config.replace(device="cuda")
        )


def test_runtime_info_records_threads(tiny_data, default_config):
    trainer = npsm.make_trainer(tiny_data, init_params(default_config), default_config)
    info = trainer.runtime_info()
    assert info["threads"] == 2 and info["device"] == "cpu"


@pytest.mark.slow
def test_default_ten_epochs_reach_the_seed_accuracy(real_data, default_config):
    trainer = npsm.make_trainer(real_data, init_params(default_config), default_config)
    history = fit(trainer, real_data, default_config, implementation="numpy")
    assert len(history.records) == 10
    assert history.final.test_accuracy >= 0.82
    assert history.records[0].train_loss > history.final.train_loss


def test_in_place_step_is_bitwise_the_pure_functions():
    rng = np.random.default_rng(7)
    params = _random_params(rng)
    work = npsm.Workspace(256, 784, 10)
    # Full and short batches, more steps than image buffers, all through one workspace.
    for n in (256, 96, 256, 256, 1):
        pixels = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        images = pixels.astype(np.float32) / np.float32(255)
        losses, logits, grads = npsm.loss_and_grads(params, images, labels)
        expected = npsm.sgd_update(params, grads, lr=0.1)
        stepped = Params(params.weights.copy(), params.bias.copy())
        loss_sum, correct = npsm.sgd_step(stepped, pixels, labels, 0.1, work)
        assert stepped.weights.tobytes() == expected.weights.tobytes()
        assert stepped.bias.tobytes() == expected.bias.tobytes()
        assert loss_sum == pytest.approx(float(losses.sum(dtype=np.float64)), rel=1e-6)
        assert correct == npsm.accuracy(logits, labels)
        params = expected
