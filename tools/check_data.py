#!/usr/bin/env python
"""Check split lists against their data root: `python tools/check_data.py --data-root ROOT --list FILE ...`.

The code is gpaco/check_data.py (also installed as the `gpaco-check-data` command); it needs only
the standard library, so this script runs before the environment is set up.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gpaco without an install

from gpaco.check_data import *  # noqa: E402,F401,F403  (tests and scripts load this file for its functions)
from gpaco.check_data import main  # noqa: E402

if __name__ == "__main__":
    try:  # the shared error contract (--debug) when torch is installed; this tool needs only the standard library
        from gpaco.engine.cli import run_cli
    except ImportError:
        sys.exit(main())
    status = []
    run_cli(lambda argv: status.append(main(argv)))
    sys.exit(status[0])
