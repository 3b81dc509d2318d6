#!/usr/bin/env python
"""Adversarial robustness: `python tools/eval_adversarial.py --checkpoint RUN --dataset cifar10 --data-root DIR`.

Clean, PGD-20, CW-20 and AutoAttack accuracy (L-inf, 8/255) on the first 10,000 test images,
resumable per batch: after a stop (SIGTERM, Ctrl-C, a crash) run the same command again
(docs/adversarial.md). Flags: `python tools/eval_adversarial.py --help`.
"""
from gpaco.classification.adversarial_eval import cli, main  # noqa: F401  (main: tests call it in-process)

if __name__ == "__main__":
    cli()
