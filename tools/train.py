#!/usr/bin/env python
"""Train a long-tailed classifier: `python tools/train.py ...` or `torchrun --nproc_per_node=N tools/train.py ...`.

Flags: `python tools/train.py --help`. The recipes under sh/ are the paper's configurations.
Bad flags, data or checkpoints end with one `error: ...` line and exit code 2; SIGTERM/SIGUSR1
save a checkpoint and exit 0 (docs/reliability.md).
"""
from torch.distributed.elastic.multiprocessing.errors import record

from gpaco.classification.train import cli

if __name__ == "__main__":
    record(cli)()
