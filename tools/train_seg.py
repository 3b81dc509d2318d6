#!/usr/bin/env python
"""Train a segmentation model (CE or GPaCo): `python tools/train_seg.py ...` or
`torchrun --nproc_per_node=N tools/train_seg.py ...`.

Flags: `python tools/train_seg.py --help`. The recipes under sh/GPaCo/Seg/ are the paper's configurations.
Bad flags end with one `error: ...` line and exit code 2; SIGTERM/SIGUSR1 save a checkpoint and exit 0.
"""
from torch.distributed.elastic.multiprocessing.errors import record

from gpaco.segmentation.train import cli

if __name__ == "__main__":
    record(cli)()
