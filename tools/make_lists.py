#!/usr/bin/env python
"""Split lists for your own data: `python tools/make_lists.py DIR --out OUTDIR [--seed 0]`.

DIR holds one folder per class (DIR/<class>/<image>); writes OUTDIR/{train,val,test}.txt and
classes.txt (docs/data.md#your-own-data). Also installed as the `gpaco-make-lists` command.
"""
from gpaco.classification.make_lists import cli

if __name__ == "__main__":
    cli()
