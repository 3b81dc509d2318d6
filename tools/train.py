#!/usr/bin/env python
"""Train a long-tailed classifier: `python tools/train.py ...` or `torchrun --nproc_per_node=N tools/train.py ...`.

Flags: `python tools/train.py --help`. The recipes under sh/ are the paper's configurations.
"""
from gpaco.engine.trainer import main

if __name__ == "__main__":
    main()
