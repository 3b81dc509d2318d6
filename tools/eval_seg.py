#!/usr/bin/env python
"""Evaluate a segmentation checkpoint (mIoU/mAcc/aAcc, single- and multi-scale), or compare runs:
`python tools/eval_seg.py --checkpoint runs/.../best.pth --mode both`,
`python tools/eval_seg.py --compare RUN_A RUN_B`. Flags: `python tools/eval_seg.py --help`.
"""
from gpaco.segmentation.evaluate import cli

if __name__ == "__main__":
    cli()
