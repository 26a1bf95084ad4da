"""A compiling implementation's ``runtime_info`` from a fresh Python process.

Compilation caches and thread pools are fixed when a framework starts, so the
tests that check them need a process of their own: :func:`fresh_runtime_infos`
builds two trainers there on random data, asking for 1 thread and then 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Prepended to a fresh process's script: ``random_data(train, test)``, a dataset of random
# images and labels, the same for a given size in every script.
RANDOM_DATA = textwrap.dedent(
    """
    import numpy as np
    from impls.data import FashionMNIST


    def random_data(num_train, num_test):
        rng = np.random.default_rng(0)
        return FashionMNIST(
            rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, num_train),
            rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, num_test),
        )
    """
)

_SCRIPT = RANDOM_DATA + textwrap.dedent(
    """
    import json, sys
    from importlib import import_module
    from impls.config import TrainConfig
    from impls.data import MinibatchOrder
    from impls.training import init_params

    module, train_first_epoch = import_module(sys.argv[1]), sys.argv[2] == "train"
    data = random_data(300, 50)
    infos = []
    for threads in (1, 2):
        config = TrainConfig(threads=threads)
        trainer = module.make_trainer(data, init_params(config), config)
        if train_first_epoch:
            trainer.train_epoch(MinibatchOrder(300, 0).epoch(0))
        infos.append(dict(trainer.runtime_info()))
    print(json.dumps(infos))
    """
)


def fresh_runtime_infos(
    module: str, cache_env: str, cache_dir, *, unset: str, train_first_epoch: bool = False
) -> list[dict]:
    """The runtime_info of a first trainer (1 thread) and a second (2) of ``module`` in a
    new process whose compilation cache is ``cache_dir`` (through ``cache_env``; the
    framework's own variable ``unset`` removed, so it cannot point elsewhere)."""
    env = {**os.environ, cache_env: str(cache_dir)}
    env.pop(unset, None)
    mode = "train" if train_first_epoch else "build"
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, module, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
