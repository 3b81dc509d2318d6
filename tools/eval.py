#!/usr/bin/env python
"""Evaluate a checkpoint: `python tools/eval.py --checkpoint runs/x/best.pth --data-root ... --test-list ...`.

Runs as one process or under torchrun (every test image counted exactly once).
"""
from gpaco.classification.evaluate import cli

if __name__ == "__main__":
    cli()
