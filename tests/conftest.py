import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Set to 1 (or pass --full) to run the full tier as well.
FULL_ENV = "GPACO_FULL_TESTS"


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help=f"also run the tests marked 'full' (the full tier; same as {FULL_ENV}=1)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "full: the full tier, skipped unless --full: checks that repeat a default-tier check on more "
        "inputs at a high cost (every recipe's dry run beyond one per entry script and method, the longest "
        "end-to-end runs whose logic faster tests cover). Run it when recipes or those paths change.")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full") or os.environ.get(FULL_ENV) == "1":
        return
    skip = pytest.mark.skip(reason="full tier: run with `bash sh/test.sh --full`")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)

ROOT = Path(__file__).resolve().parents[1]
REFVECTORS = Path(__file__).resolve().parent / "data" / "refvectors"


@pytest.fixture(scope="session")
def refvectors() -> Path:
    return REFVECTORS


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The real MNIST-LT demo data plus smaller lists so that runs take seconds:
    train_small (every 4th train line), val_small (every 2nd), test_small (every 5th).
    Shared by the whole session: tests read it and write only to their own tmp_path."""
    from gpaco.data.demo import build_mnist_lt

    root = tmp_path_factory.mktemp("mnist_lt")
    build_mnist_lt(root)
    for split, step in (("train", 4), ("val", 2), ("test", 5)):
        lines = (root / f"{split}.txt").read_text().splitlines()
        (root / f"{split}_small.txt").write_text("\n".join(lines[::step]) + "\n")
    return root


def demo_flags(demo_data: Path, *, lists: bool = True) -> list:
    """tools/train.py / tools/eval.py flags of a seconds-long run on the small demo lists (32 px, no workers)."""
    flags = ["--data-root", str(demo_data), "--image-size", "32", "--resize-size", "32", "--norm", "mnist",
             "--workers", "0"]
    if lists:
        flags += ["--train-list", str(demo_data / "train_small.txt"), "--val-list", str(demo_data / "val_small.txt"),
                  "--test-list", str(demo_data / "test_small.txt"), "--print-freq", "0", "--arch", "resnet8",
                  "--aug", "digits"]
    return flags


def run_worker(script, *args, nproc: int = 1, timeout: int = 300):
    """Run a test worker script in one process, or under ``torchrun --standalone`` with ``nproc``
    processes (gloo on the CPU, one intra-op thread each); assert that it exits 0, its output
    in the message. Returns the completed process."""
    import subprocess
    import sys

    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*launcher, str(script), *map(str, args)], env=subprocess_env(OMP_NUM_THREADS="1"),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{nproc} process(es) failed ({proc.returncode})\nstdout:\n{proc.stdout[-3000:]}\n" \
                                 f"stderr:\n{proc.stderr[-6000:]}"
    return proc


def subprocess_env(**extra) -> dict:
    """Environment of a tool run in a subprocess: this process's intra-op thread count (float
    sums, conv and matmul, are only bit-identical under the same parallelism, so an in-process
    reference run compares exactly), offline, CPU, and no torchrun or fault-injection variables
    unless ``extra`` sets them."""
    import torch

    from gpaco.engine.preemption import FAULT_ENV

    e = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
         "CUDA_VISIBLE_DEVICES": "", **extra}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", FAULT_ENV):
        if var not in extra:
            e.pop(var, None)
    return e


def sgd_step_(*models, lr: float = 0.1) -> None:
    """A plain SGD step on each model's parameters that have a gradient, then the gradients
    dropped: the second step of a comparison starts from the same update on both sides."""
    import torch

    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
                p.grad = None
