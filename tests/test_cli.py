"""The ``fmbench`` command line: exit codes, messages, outputs."""

from __future__ import annotations

import builtins
import errno
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from impls import cli, registry
from impls.cli import main
from impls.config import usable_cores
from impls.torchrun_env import LaunchedRank, launched_rank


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "tensorflow"], "known implementations: numpy"),
        (["train", "numpy", "--epochs", "0"], "--epochs: must be positive"),
        (["train", "numpy", "--lr", "-0.1"], "--lr: must be positive"),
        (["train", "numpy", "--lr", "abc"], "not a number"),
        (["train", "numpy", "--lr", "inf"], "lr must be a positive finite number, got inf"),
        (["train", "numpy", "--batch-size", "0"], "--batch-size: must be positive"),
        (["train", "numpy", "--resize", "0"], "--resize: must be positive"),
        (["train", "numpy", "--loader-workers", "2"], "numpy has no DataLoader of its own"),
        (["train", "d2l-reference", "--loader-workers", "-1"], "--loader-workers"),
        (["train", "numpy", "--data-dir", "/no/such/dir"], "not a readable directory"),
        (["train", "numpy", "--device", "quantum"], "quantum"),
        (["train", "torch-nn", "--replicas", "0"], "--replicas: must be positive"),
        (["train", "numpy", "--replicas", "2"], "one device only"),
        (["train", "torch-nn", "--replicas", "999"], "more than the"),
        (["bogus"], "invalid choice"),
        ([], "required"),
    ],
    ids=[
        "unknown-impl",
        "epochs-0",
        "negative-lr",
        "lr-text",
        "infinite-lr",
        "batch-0",
        "resize-0",
        "loader-workers-without-a-loader",
        "negative-loader-workers",
        "bad-data-dir",
        "bad-device",
        "replicas-0",
        "replicas-of-a-single-device-impl",
        "replicas-beyond-the-cores",
        "bad-command",
        "no-command",
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv, message, capsys, real_data, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where the default --out, runs/IMPL, would go
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir()), "a refused run left a folder behind"


@pytest.mark.parametrize("command", [["data", "--no-download"], ["train", "numpy", "--quiet"]])
def test_unusable_data_dir_variable_is_a_usage_error(command, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FMBENCH_DATA_DIR", str(tmp_path / "missing"))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"$FMBENCH_DATA_DIR {tmp_path / 'missing'} is not a readable directory" in err
    assert err.count("\n") == 1 and not any(tmp_path.iterdir())


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if the command gets as far as loading the dataset."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "load_fashion_mnist", refuse)


@pytest.fixture
def tiny_run(monkeypatch, tiny_data):
    """``fmbench train`` on the small synthetic dataset: a run takes well under a second."""
    monkeypatch.setattr(cli, "load_fashion_mnist", lambda *args, **kwargs: tiny_data)


@pytest.mark.parametrize("lr_args, lr", [([], 0.1 * 784 / 1600), (["--lr", "0.2"], 0.2)])
def test_resize_trains_on_resized_images_with_the_lr_rule(
    lr_args, lr, monkeypatch, tiny_data, capsys, tmp_path
):
    """--resize loads the images at that size; the lr follows the rule unless --lr is given."""
    asked = []

    def load(*args, resize=None, **kwargs):
        asked.append(resize)
        return tiny_data.at_size(resize, cache_dir=tmp_path / "cache")

    monkeypatch.setattr(cli, "load_fashion_mnist", load)
    out = tmp_path / "run"
    argv = ["train", "numpy", "--resize", "40", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main(argv + lr_args) == 0
    assert asked == [40]
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["resize"] == 40
    assert history["config"]["lr"] == pytest.approx(lr)
    assert f"after 1 epochs at 40x40 (lr {lr:.4g})" in capsys.readouterr().out


def test_more_threads_than_cores_is_refused_before_loading(no_data, capsys, tmp_path):
    cores = usable_cores()
    assert main(["train", "numpy", "--threads", str(cores + 1), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--threads {cores + 1} is more than the {cores} usable cores" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_out_that_cannot_be_a_folder_is_refused_before_loading(where, no_data, capsys, tmp_path):
    # A path under a regular file fails even for root, unlike a read-only folder.
    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    out = taken if where == "file" else taken / "run"
    assert main(["train", "numpy", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fmbench: error: --out {out} ") and err.count("\n") == 1
    assert taken.read_text() == "someone's file"


class _FullDiskFile:
    """A file opened for writing on a full disk: opening worked, every write fails."""

    def __init__(self, file) -> None:
        self._file = file

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._file.close()


def disk_fills_after_training(monkeypatch, full: Callable[[Path], bool]) -> None:
    """Once training is over, writes to files for which ``full(path)`` holds fail (ENOSPC).

    Files opened by name, and temporary files opened from ``mkstemp``'s descriptor
    (as :func:`impls.files.write_atomically` does).
    """
    real_open, real_train = builtins.open, registry.train
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    full_fds: set[int] = set()

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and full(Path(file).resolve()):
            return _FullDiskFile(handle)
        return handle

    def mkstemp_on_full_disk(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        (full_fds.add if full(Path(name).resolve()) else full_fds.discard)(fd)
        return fd, name

    def fdopen_on_full_disk(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        return _FullDiskFile(handle) if fd in full_fds else handle

    def train_then_fill(*args, **kwargs):
        result = real_train(*args, **kwargs)
        monkeypatch.setattr(builtins, "open", open_on_full_disk)  # matplotlib, PIL
        monkeypatch.setattr(io, "open", open_on_full_disk)  # pathlib
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_full_disk)
        monkeypatch.setattr(os, "fdopen", fdopen_on_full_disk)
        return result

    monkeypatch.setattr(registry, "train", train_then_fill)


def test_full_disk_after_training_keeps_the_history(tiny_run, monkeypatch, capsys, tmp_path):
    out, spare = tmp_path / "run", tmp_path / "spare"
    out.mkdir()
    spare.mkdir()
    (out / "history.json").write_text("the previous run's history")
    monkeypatch.setattr(tempfile, "tempdir", str(spare))  # the system's temporary folder
    disk_fills_after_training(monkeypatch, lambda path: path.is_relative_to(out.resolve()))

    assert main(["train", "numpy", "--epochs", "2", "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "final test accuracy" in captured.out
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"could not write {out / 'history.json'} (No space left on device)" in err
    (rescued,) = spare.glob("fmbench-history-*.json")
    assert f"the history is saved in {rescued} instead" in err
    assert len(json.loads(rescued.read_text())["records"]) == 2
    # Written whole or not at all: the old file untouched, no temporary file left.
    assert (out / "history.json").read_text() == "the previous run's history"
    assert sorted(path.name for path in out.iterdir()) == ["history.json"]


def test_history_goes_to_stdout_when_no_folder_takes_it(tiny_run, monkeypatch, capsys, tmp_path):
    out, taken = tmp_path / "run", tmp_path / "taken"
    taken.write_text("a file")
    monkeypatch.setattr(tempfile, "tempdir", str(taken / "tmp"))  # unusable as well
    disk_fills_after_training(monkeypatch, lambda path: path.is_relative_to(out.resolve()))

    assert main(["train", "numpy", "--epochs", "2", "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "the history is printed on stdout instead" in captured.err
    assert captured.err.count("\n") == 1
    history = json.loads(captured.out[captured.out.index("\n{") :])
    assert len(history["records"]) == 2
    assert not out.exists()  # the folder this run made, left empty, is gone


def test_figures_that_do_not_fit_leave_the_history_whole(tiny_run, monkeypatch, capsys, tmp_path):
    out = tmp_path / "run"
    disk_fills_after_training(monkeypatch, lambda path: ".png" in path.name)

    assert main(["train", "numpy", "--epochs", "2", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"history saved in {out / 'history.json'}, but not the figures" in err
    assert len(json.loads((out / "history.json").read_text())["records"]) == 2
    assert sorted(path.name for path in out.iterdir()) == ["history.json"]


def test_save_figure_replaces_a_file_whole_or_not_at_all(tmp_path, monkeypatch):
    from matplotlib import cbook
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from impls.figures import pyplot, save_figure

    plt = pyplot()
    path = save_figure(plt.figure(), tmp_path / "curves.png")
    before = path.read_bytes()

    def disk_full_halfway(self, filename_or_obj, *args, **kwargs):
        with cbook.open_file_cm(filename_or_obj, "wb") as file:
            file.write(before[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(FigureCanvasAgg, "print_png", disk_full_halfway)
    figure = plt.figure()
    with pytest.raises(OSError, match="No space left"):
        save_figure(figure, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]
    assert not plt.fignum_exists(figure.number)  # closed all the same


@pytest.mark.parametrize("impl", ["numpy", "torch-nn", "jax"])
def test_absent_device_exits_2_with_one_line(impl, tiny_run, capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", impl, "--device", "quantum", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmbench: error: ") and "'quantum'" in err and "cpu" in err.lower()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(usable_cores() < 2, reason="2 replicas need 2 usable cores")
def test_train_jax_over_2_replicas_in_a_process_of_its_own(real_data, tmp_path):
    """fmbench gives JAX its 2 host devices before JAX starts: no XLA_FLAGS needed."""
    env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
    out = tmp_path / "run"
    argv = ["train", "jax", "--replicas", "2", "--epochs", "1", "--quiet", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "impls.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "final test accuracy 0.7" in result.stdout  # one epoch, as one replica gets
    assert "with 2 threads over 2 replicas" in result.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["replicas"] == 2
    assert history["runtime"]["devices"] == ["cpu:0", "cpu:1"]
    assert history["runtime"]["xla_flags"] == "--xla_force_host_platform_device_count=2"


def test_jax_replicas_once_jax_started_with_fewer_devices_exit_2(
    tiny_run, monkeypatch, capsys, tmp_path
):
    jax = pytest.importorskip("jax")
    replicas = len(jax.devices("cpu")) + 1  # JAX has started in this process now
    if replicas > usable_cores():
        pytest.skip(f"{replicas} replicas need {replicas} usable cores")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # fmbench sets it: restored afterwards
    out = tmp_path / "run"
    assert main(["train", "jax", "--replicas", str(replicas), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    flag = f"XLA_FLAGS=--xla_force_host_platform_device_count={replicas}"
    assert f"start the process with {flag}" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_value_error_while_training_exits_1_with_one_line(
    tiny_run, monkeypatch, capsys, tmp_path
):
    from impls import numpy_softmax

    def fails(self, order):
        raise ValueError("a framework's complaint\nover two lines")

    monkeypatch.setattr(numpy_softmax.NumpyTrainer, "train_epoch", fails)
    out = tmp_path / "run"
    assert main(["train", "numpy", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == "fmbench: error: numpy failed: a framework's complaint over two lines\n"
    assert not out.exists()


def test_out_of_memory_is_one_line_naming_the_batch_size(tiny_run, monkeypatch, capsys, tmp_path):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(registry, "train", exhausted)
    out = tmp_path / "run"
    assert main(["train", "numpy", "--batch-size", "4096", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "out of memory training numpy with batch size 4096: reduce --batch-size" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_batch_size_beyond_the_data_is_one_batch_per_epoch(tiny_run, capsys, tmp_path):
    argv = ["train", "numpy", "--batch-size", str(10**12), "--epochs", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["config"]["batch_size"] == 10**12 and len(history["records"]) == 1


def test_train_numpy_prints_epochs_and_writes_figures(tmp_path, capsys, real_data):
    out = tmp_path / "run"
    assert (
        main(["train", "numpy", "--epochs", "2", "--threads", "2", "--out", str(out), "--quiet"])
        == 0
    )
    stdout = capsys.readouterr().out
    assert stdout.count("  test acc ") == 2
    assert "final test accuracy 0.8" in stdout
    for name in ("curves.png", "predictions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert len(history["records"]) == 2 and history["config"]["threads"] == 2


# ------------------------------------------------------------- data parallel


def replicas_run_argv(replicas: int, out: Path, threads: tuple[str, ...] = ("--threads", "2")):
    """``fmbench train torch-nn`` for one epoch over ``replicas`` (2 threads in all)."""
    return [
        "train", "torch-nn", "--epochs", "1", *threads, "--replicas", str(replicas),
        "--quiet", "--out", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_replica_history(real_data, tmp_path_factory) -> dict:
    """torch-nn's one-epoch history on one device, the baseline of the replicated runs."""
    out = tmp_path_factory.mktemp("one-replica")
    assert main(replicas_run_argv(1, out)) == 0
    return json.loads((out / "history.json").read_text())


def assert_same_accuracy(history: dict, baseline: dict) -> None:
    """The same test accuracy after the epoch, but for a few near-tied examples."""
    accuracy = history["records"][-1]["test_accuracy"]
    expected = baseline["records"][-1]["test_accuracy"]
    assert abs(round(accuracy * 10_000) - round(expected * 10_000)) <= 3


@pytest.fixture
def two_cores():
    if usable_cores() < 2:
        pytest.skip("two replicas on the CPU need two usable cores")


def test_train_over_replicas_reaches_one_replicas_accuracy(
    two_cores, one_replica_history, capsys, tmp_path
):
    out = tmp_path / "two-replicas"
    assert main(replicas_run_argv(2, out)) == 0
    stdout = capsys.readouterr().out
    assert "with 2 threads over 2 replicas" in stdout and " s all-reduce)" in stdout
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["replicas"] == 2
    assert history["records"][0]["communication_seconds"] > 0
    runtime = history["runtime"]
    assert runtime["replicas"] == 2 and runtime["backend"] == "gloo"
    assert runtime["threads_per_replica"] == 1
    assert_same_accuracy(history, one_replica_history)
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [child for child in multiprocessing.active_children() if "replica" in child.name]


def test_torchrun_starts_each_replica_and_rank_0_alone_reports(
    two_cores, one_replica_history, tmp_path
):
    """``torchrun --standalone --nproc-per-node 2 -m impls.cli train ... --replicas 2``."""
    out = tmp_path / "torchrun"
    root = Path(cli.__file__).resolve().parents[1]  # this checkout's impls, in every rank
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    # No --threads: by default this machine's cores, shared by the ranks torchrun started.
    train = replicas_run_argv(2, out, threads=())
    argv = [*torchrun, "--nproc-per-node", "2", "-m", "impls.cli", *train]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("epoch   1 ") == 1 and result.stdout.count("wrote ") == 1
    history = json.loads((out / "history.json").read_text())
    runtime = history["runtime"]
    assert (runtime["launcher"], runtime["replicas"]) == ("torchrun", 2)
    assert runtime["threads_per_replica"] == usable_cores() // 2
    assert_same_accuracy(history, one_replica_history)


TORCHRUN_RANK_1_OF_2 = {
    "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
}  # fmt: skip


def test_launched_rank_reads_torchrun_s_environment():
    assert launched_rank({}) is None
    assert launched_rank({"RANK": "0", "WORLD_SIZE": "2"}) is None  # not all of torchrun's
    rank = launched_rank(TORCHRUN_RANK_1_OF_2)
    assert rank == LaunchedRank(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert not rank.is_first


def test_replicas_other_than_torchrun_s_processes_exit_2(no_data, monkeypatch, capsys, tmp_path):
    for name, value in TORCHRUN_RANK_1_OF_2.items():
        monkeypatch.setenv(name, value)
    assert main(["train", "torch-nn", "--replicas", "3", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--replicas 3 must equal the 2 processes torchrun started (its WORLD_SIZE)" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_divergence_exits_1_with_clear_message(tmp_path, capsys, real_data):
    assert (
        main(["train", "numpy", "--lr", "1e6", "--epochs", "2", "--out", str(tmp_path), "--quiet"])
        == 1
    )
    assert "diverged at epoch 1" in capsys.readouterr().err


def test_list_shows_every_implementation(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in registry.REGISTRY:
        assert name in out
    # Which implementations take --replicas, and which run on one device only.
    takers = [impl for impl in registry.REGISTRY.values() if impl.data_parallel]
    assert all(f"replicas: {impl.data_parallel}" in out for impl in takers)
    assert out.count("one device only") == len(registry.REGISTRY) - len(takers)
    # Which ones the benchmark leaves out unless named, and why.
    opt_in = [impl for impl in registry.REGISTRY.values() if impl.opt_in]
    for impl in opt_in:
        assert f"opt-in for the benchmark (--impl {impl.name}): {impl.opt_in}" in out
    assert out.count("opt-in for the benchmark") == len(opt_in)


def test_list_survives_a_missing_framework(monkeypatch, capsys):
    fake = registry.Implementation("fake", "impls.fake", ("no_such_framework_xyz",), "fake", "x")
    monkeypatch.setitem(registry.REGISTRY, "fake", fake)
    assert main(["list"]) == 0
    assert "missing no_such_framework_xyz (pip install 'fmbench[fake]')" in capsys.readouterr().out


def test_data_reports_four_verified_files(capsys, real_data):
    assert main(["data", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert out.count("verified sha256") == 4 and "4 files verified" in out


def test_console_script_runs_as_a_process(real_data):
    result = subprocess.run(
        [sys.executable, "-m", "impls.cli", "train", "numpy", "--epochs", "-3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_report_subcommand_passes_its_arguments_through(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["report", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    assert "--previous" in capsys.readouterr().out


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_output_piped_into_a_closed_reader_is_not_an_error(unbuffered):
    # "fmbench list | head -1": head exits early and the pipe breaks under fmbench.
    result = subprocess.run(
        f"'{sys.executable}' -m impls.cli list | head -1",
        shell=True, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
    )  # fmt: skip
    assert result.stdout.startswith("numpy")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
