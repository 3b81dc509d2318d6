#!/usr/bin/env python
"""A study in one command: methods x seeds (x datasets) as ordinary run folders, then the report
(mean ± std and 95 % intervals over seeds, paired differences, figures).

    python tools/study.py                                   # CE, balanced CE, GPaCo x 3 seeds on the demo
    python tools/study.py --methods ce gpaco --data my_lists -- --epochs 60

Flags: `python tools/study.py --help`; docs/study.md. The same code as the `gpaco-study` command.
"""
from gpaco.study.cli import cli

if __name__ == "__main__":
    cli()
