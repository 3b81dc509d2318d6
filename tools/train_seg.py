#!/usr/bin/env python
"""Train a segmentation model (CE or GPaCo): `python tools/train_seg.py ...` or
`torchrun --nproc_per_node=N tools/train_seg.py ...`.

Flags: `python tools/train_seg.py --help`. The recipes under sh/GPaCo/Seg/ are the paper's configurations.
"""
from gpaco.engine.seg import main

if __name__ == "__main__":
    main()
