"""The PyTorch implementations' own parts: maths, gradients, devices, the d2l pipeline.

The book's naive ``softmax`` lives here as the oracle for torch-scratch's
log-space loss; gradients are held to the NumPy oracle of
``tests/oracles.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oracles import loss_and_grads, sgd_update  # noqa: E402  (the NumPy oracle)

from impls import numpy_softmax, torch_nn, torch_scratch, torch_support  # noqa: E402
from impls.cli import main  # noqa: E402
from impls.config import TrainConfig  # noqa: E402
from impls.data import MinibatchOrder, split_batches, to_float32  # noqa: E402
from impls.protocol import DeviceUnavailableError, Params  # noqa: E402
from impls.registry import MissingFrameworkError  # noqa: E402
from impls.training import init_params  # noqa: E402

# One step's gradient in float32: only the summation order differs from NumPy's.
GRAD_RTOL = 1e-4
GRAD_ATOL = 1e-6


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Trainers set PyTorch's process-wide thread count; put it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def random_params(seed: int, std: float) -> Params:
    """Parameters large enough that the softmax is far from uniform."""
    rng = np.random.default_rng(seed)
    return Params(
        rng.normal(0, std, size=(784, 10)).astype(np.float32),
        rng.normal(0, std, size=10).astype(np.float32),
    )


def first_batch(data, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The first minibatch of the shared order: float32 (n, 784) images and labels."""
    index = split_batches(MinibatchOrder(data.num_train, 0).epoch(0), batch_size)[0]
    return to_float32(data.train_images[index]).reshape(len(index), -1), data.train_labels[index]


def leaf_tensors(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """torch-scratch's parameters: W transposed (10, 784) and b, requiring gradients."""
    weights_t = torch.tensor(np.ascontiguousarray(params.weights.T), requires_grad=True)
    return weights_t, torch.tensor(params.bias, requires_grad=True)


# ------------------------------------------------------------ the oracle


def book_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The book's ``softmax``: exp, then normalise each row (no shift: overflows)."""
    exps = logits.exp()
    return exps / exps.sum(dim=1, keepdim=True)


def book_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The book's ``cross_entropy``: minus the log of the probability picked by the label."""
    return -book_softmax(logits)[range(len(labels)), labels].log()


# ---------------------------------------------------------------------- maths


def test_cross_entropy_matches_the_book_and_torch():
    logits = torch.from_numpy(np.random.default_rng(0).normal(0, 5, size=(64, 10))).float()
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 10, size=64))
    losses = torch_scratch.cross_entropy(logits, labels)
    torch.testing.assert_close(losses, book_cross_entropy(logits, labels))
    torch.testing.assert_close(
        losses, torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    )


def test_cross_entropy_is_stable_where_the_book_overflows():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]])
    labels = torch.tensor([1, 0])
    assert not torch.isfinite(book_cross_entropy(logits, labels)).any()
    # The true class sits 1000 and 2e4 below the top logit: the loss is exactly that gap.
    torch.testing.assert_close(
        torch_scratch.cross_entropy(logits, labels), torch.tensor([1e3, 2e4])
    )


def test_count_correct_counts_argmax_hits():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert int(torch_scratch.count_correct(logits, torch.tensor([1, 1, 1]))) == 2


def test_train_step_is_the_oracle_step_on_the_batch_it_is_given():
    # Three examples: a step dividing by any other count than the batch's own is far off.
    rng = np.random.default_rng(6)
    params = random_params(6, 0.1)
    images = rng.random((3, 784), dtype=np.float32)
    labels = rng.integers(0, 10, 3)
    losses, logits, grads = loss_and_grads(params, images, labels)
    expected = sgd_update(params, grads, lr=0.5)

    weights_t, bias = leaf_tensors(params)
    loss_sum, correct = torch_scratch.train_step(
        weights_t, bias, torch.from_numpy(images), torch.from_numpy(labels), lr=0.5
    )
    np.testing.assert_allclose(weights_t.detach().numpy().T, expected.weights, atol=1e-7)
    np.testing.assert_allclose(bias.detach().numpy(), expected.bias, atol=1e-7)
    assert float(loss_sum) == pytest.approx(float(losses.sum()), rel=1e-6)
    assert int(correct) == int((logits.argmax(axis=1) == labels).sum())
    assert not weights_t.grad.any() and not bias.grad.any()  # zeroed for the next step


# ------------------------------------------------------- gradients: an oracle


@pytest.mark.parametrize("params_kind", ["shared-initial", "far-from-uniform"])
def test_scratch_autograd_equals_the_numpy_oracle(params_kind, real_data):
    images, labels = first_batch(real_data)
    config = TrainConfig()
    params = init_params(config) if params_kind == "shared-initial" else random_params(3, 0.1)
    losses, _, grads = loss_and_grads(params, images, labels)

    weights_t, bias = leaf_tensors(params)
    torch_losses = torch_scratch.cross_entropy(
        torch_scratch.forward(weights_t, bias, torch.from_numpy(images)), torch.from_numpy(labels)
    )
    torch_losses.mean().backward()

    np.testing.assert_allclose(losses, torch_losses.detach().numpy(), rtol=GRAD_RTOL)
    scale = np.abs(grads.weights).max()
    np.testing.assert_allclose(
        grads.weights, weights_t.grad.numpy().T, rtol=GRAD_RTOL, atol=GRAD_ATOL * scale
    )
    np.testing.assert_allclose(grads.bias, bias.grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_nn_cross_entropy_gradient_equals_the_numpy_oracle(real_data):
    images, labels = first_batch(real_data)
    params = random_params(4, 0.1)
    _, _, grads = loss_and_grads(params, images, labels)
    net = torch_support.build_net(params, torch.device("cpu"))
    loss = torch.nn.CrossEntropyLoss()(net(torch.from_numpy(images)), torch.from_numpy(labels))
    loss.backward()
    linear = net[1]
    scale = np.abs(grads.weights).max()
    np.testing.assert_allclose(
        grads.weights, linear.weight.grad.numpy().T, rtol=GRAD_RTOL, atol=GRAD_ATOL * scale
    )
    np.testing.assert_allclose(grads.bias, linear.bias.grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_nn_linear_round_trips_the_shared_layout():
    params = random_params(5, 1.0)
    net = torch_support.build_net(params, torch.device("cpu"))
    assert tuple(net[1].weight.shape) == (10, 784)
    round_trip = torch_support.linear_params(net[1])
    np.testing.assert_array_equal(round_trip.weights, params.weights)
    np.testing.assert_array_equal(round_trip.bias, params.bias)
    assert round_trip.weights.flags.c_contiguous


# ------------------------------------------------------------------- training


@pytest.mark.parametrize("module", [torch_scratch, torch_nn], ids=["torch-scratch", "torch-nn"])
def test_short_last_batch_takes_its_own_mean(module, tiny_data, default_config):
    # 600 examples in batches of 256 leave 88 at the end; dividing that batch's
    # summed gradient by 256 instead would move the weights well outside tolerance.
    assert tiny_data.num_train % default_config.batch_size == 88
    order = MinibatchOrder(tiny_data.num_train, 0)
    trainers = [
        impl.make_trainer(tiny_data, init_params(default_config), default_config)
        for impl in (numpy_softmax, module)
    ]
    for epoch in range(2):
        stats = [trainer.train_epoch(order.epoch(epoch)) for trainer in trainers]
        assert stats[1].loss == pytest.approx(stats[0].loss, rel=1e-5)
    expected, actual = (trainer.parameters() for trainer in trainers)
    np.testing.assert_allclose(actual.weights, expected.weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(actual.bias, expected.bias, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("module", [torch_scratch, torch_nn], ids=["torch-scratch", "torch-nn"])
def test_threads_are_applied(module, tiny_data):
    trainer = module.make_trainer(tiny_data, init_params(TrainConfig()), TrainConfig(threads=1))
    torch.set_num_threads(2)  # as another trainer in the process might
    trainer.evaluate()
    assert torch.get_num_threads() == 1
    assert trainer.runtime_info()["threads"] == 1


def test_unknown_device_names_the_available_ones(tiny_data):
    with pytest.raises(DeviceUnavailableError, match=r"'tpu'.*available: cpu"):
        torch_scratch.make_trainer(tiny_data, init_params(TrainConfig()), TrainConfig(device="tpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("module", [torch_scratch, torch_nn], ids=["torch-scratch", "torch-nn"])
def test_cuda_epoch_matches_cpu(module, real_data):
    order = MinibatchOrder(real_data.num_train, 0).epoch(0)
    results = []
    for device in ("cpu", "cuda"):
        config = TrainConfig(device=device, threads=2)
        trainer = module.make_trainer(real_data, init_params(config), config)
        results.append((trainer.train_epoch(order), trainer.parameters(), trainer.runtime_info()))
    (cpu_stats, cpu_params, _), (cuda_stats, cuda_params, cuda_info) = results
    assert cuda_info["device"] == "cuda"
    # TF32 is off by default for matmuls, so the GPU computes in float32 as well.
    np.testing.assert_allclose(cuda_params.weights, cpu_params.weights, rtol=1e-4, atol=1e-5)
    assert cuda_stats.loss == pytest.approx(cpu_stats.loss, rel=1e-4)


# ------------------------------------------------------------ torch-compile


def test_compiled_build_compiles_every_step_and_leaves_the_weights(tiny_data, default_config):
    """The build compiles each batch length an epoch has (600 examples: 256 and 88) on batches
    of zeros, with no optimizer step; the first epoch then compiles nothing more."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # forget what earlier tests compiled: this build must compile it all
    initial = init_params(default_config)
    trainer = torch_nn.make_compiled_trainer(tiny_data, initial, default_config)
    info = trainer.runtime_info()
    assert set(info["compile_seconds_by_program"]) == {"step[256]", "step[88]"}
    assert info["compile_seconds"] > 0 and "torch.compile" in info["strategy"]
    np.testing.assert_array_equal(trainer.parameters().weights, initial.weights)
    np.testing.assert_array_equal(trainer.parameters().bias, initial.bias)
    graphs = counters["stats"]["unique_graphs"]
    trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 0).epoch(0))
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_build_without_a_cpp_compiler_names_what_to_install(
    tiny_data, default_config, monkeypatch, tmp_path, capsys, real_data
):
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", (None, "no-such-compiler-fmbench"))
    message = r"needs a C\+\+ compiler .*tried no-such-compiler-fmbench.*apt-get install g\+\+"
    with pytest.raises(MissingFrameworkError, match=message):
        torch_nn.make_compiled_trainer(tiny_data, init_params(default_config), default_config)
    out = tmp_path / "run"
    assert main(["train", "torch-compile", "--epochs", "1", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fmbench: error: torch.compile on cpu needs a C++ compiler")
    assert err.count("\n") == 1 and not out.exists()


def test_inductor_cache_directory_follows_the_variables(monkeypatch, tmp_path):
    """$FMBENCH_TORCH_CACHE_DIR, else $TORCHINDUCTOR_CACHE_DIR; set but empty: no cache, inductor
    writing to a directory of the process's own."""
    choose = torch_support._choose_inductor_cache
    inductor, ours = torch_support.INDUCTOR_CACHE_ENV, torch_support.COMPILE_CACHE_ENV
    monkeypatch.setenv(inductor, str(tmp_path / "inductor"))
    monkeypatch.delenv(ours, raising=False)
    assert choose() == {
        "compilation_cache_dir": str(tmp_path / "inductor"),
        "compilation_cache_set_by": f"${inductor}",
    }
    monkeypatch.setenv(ours, str(tmp_path / "ours"))
    assert choose()["compilation_cache_dir"] == str(tmp_path / "ours")
    assert os.environ[inductor] == str(tmp_path / "ours") and (tmp_path / "ours").is_dir()
    monkeypatch.setenv(ours, "")
    assert choose() == {"compilation_cache_dir": None, "compilation_cache_set_by": f"${ours}"}
    private = Path(os.environ[inductor])
    assert private.is_dir() and private.name.startswith("fmbench-inductor-")
    # Inductor's own default, which it writes into the variable itself, is nobody's choice.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(inductor, default_cache_dir())
    monkeypatch.delenv(ours)
    assert choose()["compilation_cache_set_by"] == "fmbench default"


_COMPILED_IN_A_FRESH_PROCESS = """
import json
import numpy as np
from impls import torch_nn
from impls.config import TrainConfig
from impls.data import FashionMNIST
from impls.training import init_params
rng = np.random.default_rng(0)
data = FashionMNIST(
    rng.integers(0, 256, (600, 28, 28), dtype=np.uint8), rng.integers(0, 10, 600),
    rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50),
)
config = TrainConfig(threads=1)
trainer = torch_nn.make_compiled_trainer(data, init_params(config), config)
print(json.dumps(dict(trainer.runtime_info())))
"""


def test_fresh_processes_compile_cold_then_load_from_the_cache(tmp_path):
    """What the benchmark's compile-cold and compile-warm rows rely on."""
    env = {**os.environ, torch_support.COMPILE_CACHE_ENV: str(tmp_path / "cache")}
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", _COMPILED_IN_A_FRESH_PROCESS],
            env=env, capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["compilation_cache_dir"] == str(tmp_path / "cache")
    assert cold["compilation_cache_entries_before"] == 0
    # Two batch lengths (256 and 88), a forward and a backward graph each.
    assert cold["compilation_cache_misses"] == 4 and cold["compilation_cache_warm"] is False
    assert warm["compilation_cache_entries_before"] >= 4
    assert warm["compilation_cache_hits"] == 4 and warm["compilation_cache_warm"] is True
    assert warm["compile_seconds"] < cold["compile_seconds"]


# ------------------------------------------------------- the d2l reference


@pytest.fixture
def d2l():
    pytest.importorskip("torchvision")
    from impls import d2l_reference

    return d2l_reference


def test_torchvision_reads_exactly_the_given_arrays(d2l, real_data):
    train_set, test_set = d2l.load_datasets(real_data)
    assert torch.equal(train_set.data, torch.from_numpy(real_data.train_images))
    assert torch.equal(train_set.targets, torch.from_numpy(real_data.train_labels))
    assert torch.equal(test_set.data, torch.from_numpy(real_data.test_images))
    assert torch.equal(test_set.targets, torch.from_numpy(real_data.test_labels))
    # ToTensor per sample gives bit-for-bit the pixels every other implementation uses.
    image, label = train_set[123]
    assert tuple(image.shape) == (1, 28, 28)
    np.testing.assert_array_equal(image[0].numpy(), to_float32(real_data.train_images[123]))
    assert label == real_data.train_labels[123]


def test_d2l_never_downloads(d2l, tiny_data, monkeypatch):
    def refuse(self):
        raise AssertionError("torchvision tried to download")

    monkeypatch.setattr(d2l.datasets.FashionMNIST, "download", refuse)
    d2l.load_datasets(tiny_data)


def d2l_epoch(d2l, data, config, *, num_workers, order=None) -> Params:
    """The d2l reference's parameters after one epoch."""
    config = config.replace(loader_workers=num_workers)
    trainer = d2l.make_trainer(data, init_params(config), config)
    trainer.train_epoch(order if order is not None else np.arange(data.num_train))
    assert trainer.runtime_info()["num_workers"] == num_workers
    return trainer.parameters()


def test_d2l_shuffle_is_seeded_and_independent_of_workers_and_order(d2l, tiny_data):
    config = TrainConfig(threads=2)
    with_workers = d2l_epoch(d2l, tiny_data, config, num_workers=d2l.BOOK_WORKERS)
    in_process = d2l_epoch(
        d2l, tiny_data, config, num_workers=0, order=np.arange(tiny_data.num_train)[::-1]
    )
    # Same seed: the same shuffle whether batches come from workers or not, and
    # whatever shared order is passed in (it is ignored by design).
    np.testing.assert_array_equal(with_workers.weights, in_process.weights)
    other_seed = d2l_epoch(d2l, tiny_data, config.replace(seed=1), num_workers=0)
    assert not np.array_equal(other_seed.weights, in_process.weights)


def test_d2l_falls_back_to_no_workers_where_they_cannot_start(d2l, tiny_data, monkeypatch):
    class WorkerlessDataLoader(d2l.DataLoader):
        """A DataLoader as in a sandbox without the shared memory workers need."""

        def __iter__(self):
            if self.num_workers:
                raise OSError(38, "Function not implemented")
            return super().__iter__()

    monkeypatch.setattr(d2l, "DataLoader", WorkerlessDataLoader)
    config = TrainConfig(threads=2)
    trainer = d2l.make_trainer(tiny_data, init_params(config), config)
    info = trainer.runtime_info()
    assert info["num_workers"] == 0
    assert "Function not implemented" in info["num_workers_note"]
    assert 0 <= trainer.train_epoch(np.arange(tiny_data.num_train)).accuracy <= 1


def test_d2l_uses_the_books_workers_here(d2l, tiny_data):
    config = TrainConfig(threads=2)
    info = d2l.make_trainer(tiny_data, init_params(config), config).runtime_info()
    assert info["num_workers"] == d2l.BOOK_WORKERS
    assert "num_workers_note" not in info


@pytest.mark.parametrize("workers", [0, 2])
def test_d2l_loader_alone_delivers_every_example_without_training(d2l, tiny_data, workers):
    """load_batches is the input pipeline alone: the whole set, with the workers asked for."""
    config = TrainConfig(threads=1, batch_size=64, loader_workers=workers)
    trainer = d2l.make_trainer(tiny_data, init_params(config), config)
    before = trainer.parameters()
    assert trainer.load_batches() == tiny_data.num_train
    np.testing.assert_array_equal(trainer.parameters().weights, before.weights)
    assert trainer.runtime_info()["num_workers"] == workers
    assert f"in {workers} worker process" in trainer.runtime_info()["strategy"]
