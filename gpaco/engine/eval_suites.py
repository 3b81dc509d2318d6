"""Evaluation suites as entries of one list, run by one skeleton.

A task's evaluation tool (``tools/eval.py``, ``tools/eval_seg.py``) declares what it can
evaluate on as :class:`EvalSuite` rows: the clean split, ImageNet-C, -R, -Sketch for
classification; single-scale and multi-scale + flip for segmentation. :func:`run_eval_suites`
runs the ones the flags select, in order, and files each one's figures under its key of
``metrics.json``. Adding a suite is one row (docs/contributing.md#add-an-evaluation-suite).
(Speed measurements are elsewhere: ``bench/``.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ["EvalSuite", "run_eval_suites"]


@dataclass(frozen=True)
class EvalSuite:
    """One evaluation suite.

    Attributes:
        name: what it is called in logs and docs.
        result_key: where its figures go in ``metrics.json`` (None: merged at the top level,
            as the clean split's top-1 / many / medium / few).
        selected: ``(args) -> bool``: whether the flags ask for it.
        run: ``(context) -> dict | None``: evaluates every model of the context on the
            suite (exact over processes) and returns its figures, or None when it was
            skipped (a dry run without its data); prints its own summary line.
        flag: the flag that names its data, for ``--help`` and errors.
    """

    name: str
    result_key: Optional[str]
    selected: Callable[[Any], bool]
    run: Callable[[Any], Optional[Dict[str, Any]]]
    flag: Optional[str] = None


def run_eval_suites(suites: Sequence[EvalSuite], args: Any, context: Any) -> Dict[str, Any]:
    """Run the selected ``suites`` in order; their figures by ``result_key``."""
    results: Dict[str, Any] = {}
    for suite in suites:
        if not suite.selected(args):
            continue
        figures = suite.run(context)
        if figures is None:
            continue
        if suite.result_key is None:
            results.update(figures)
        else:
            results[suite.result_key] = figures
    return results
