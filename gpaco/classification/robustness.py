"""Robustness evaluation: ImageNet-C-style corruption trees, ImageNet-R, ImageNet-Sketch (docs/method.md#metrics).

The folder layouts (ImageNet-C, our label-index corrupted trees, ImageNet-R, -Sketch) and the
benchmark constants are :mod:`gpaco.data.robustness`.

Naming of the corruption figures (docs/method.md#metrics, a naming trap): the paper's "mCE" is the
*unnormalised* mean corruption error, ``100 * mean_c E_c`` (``mce_unnormalised``); its "rel. mCE" is the AlexNet-normalised ``100 * mean_c E_c / E_c^AlexNet``
(``mce_alexnet_normalised``), which is Hendrycks & Dietterich's standard mCE; neither is
Hendrycks' "relative mCE" (clean error subtracted). ``mce_baseline_normalised`` divides by a
chosen baseline run's per-corruption errors instead of AlexNet's (AlexNet constants exist only
for ImageNet-C).
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from gpaco.data.robustness import ALEXNET_ERRORS, CORRUPTIONS, IMAGENET_R_INDICES, SEVERITIES, find_corruption_tree
from gpaco.metrics import corruption_errors

__all__ = ["evaluate_corruptions", "corruption_table", "load_baseline_errors", "imagenet_r_columns", "MCE_NAMES"]

#: Our key -> what the number is, with the paper's name, for printouts and docs.
MCE_NAMES = {
    "mce_unnormalised": 'mean corruption error, unnormalised = 100 * mean_c E_c (the paper\'s "mCE")',
    "mce_alexnet_normalised": ('mean corruption error normalised by AlexNet = 100 * mean_c E_c / E_c^AlexNet '
                               '(the paper\'s "rel. mCE"; Hendrycks\' standard mCE)'),
    "mce_baseline_normalised": "mean corruption error normalised by the baseline run = 100 * mean_c E_c / E_c^base",
}


def evaluate_corruptions(
    root: str,
    evaluate_folder: Callable[[str], dict],
    *,
    baseline_errors: Optional[Mapping[str, float]] = None,
    baseline_label: Optional[str] = None,
    max_folders: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Top-1 on every ``root/<corruption>/<severity>`` folder and the corruption errors.

    Args:
        evaluate_folder: folder -> metrics dict with ``top1`` (percent) and ``num_samples``
            (and ``label_index_named``: whether the folder used label-index class names).
        baseline_errors: ``{corruption: E_c}`` of a baseline run, for ``mce_baseline_normalised``.
        max_folders: evaluate only this many folders (dry runs).
    Returns:
        ``accuracy_by_severity`` ({c: [fraction per severity]}), ``error_by_severity`` (percent),
        ``num_images`` ({c: [n per severity]}), and the keys of
        :func:`gpaco.metrics.corruption_errors` (``corruption_errors``, ``mce_unnormalised``,
        ``mce_alexnet_normalised`` (None unless an ImageNet-C wnid tree with all 15),
        ``mce_baseline_normalised``), plus ``root``, ``notes``, ``severities``.
    """
    tree, notes = find_corruption_tree(root)
    acc: Dict[str, List[float]] = {}
    counts: Dict[str, List[int]] = {}
    sev_used: Dict[str, List[int]] = {}
    imagenet_style = True
    done = 0
    t0 = time.time()
    for c, severities in tree.items():
        for s, folder in sorted(severities.items()):
            if max_folders is not None and done >= max_folders:
                break
            m = evaluate_folder(folder)
            imagenet_style &= not m.get("label_index_named", False)
            acc.setdefault(c, []).append(m["top1"] / 100.0)
            counts.setdefault(c, []).append(int(m["num_samples"]))
            sev_used.setdefault(c, []).append(s)
            done += 1
        if c in acc:
            log(f"  {c:<18s} top-1 by severity " + " ".join(f"{100 * a:6.2f}" for a in acc[c])
                + f"  ({time.time() - t0:.0f}s)")
    if baseline_errors is not None:
        absent = [c for c in acc if c not in baseline_errors]
        if absent:
            raise ValueError(f"the --mce-baseline run has no errors for {', '.join(absent)}")
    res = corruption_errors(acc, baseline_errors=baseline_errors)
    full_imagenet_c = imagenet_style and set(acc) == set(CORRUPTIONS) and \
        all(len(v) == len(SEVERITIES) for v in acc.values())
    if not full_imagenet_c:
        res["mce_alexnet_normalised"] = None
        notes.append("no AlexNet-normalised mCE: the AlexNet constants are for the full ImageNet-C (15 "
                     "corruptions x 5 severities, wnid class folders) only" +
                     ("; normalise by a baseline run instead (--mce-baseline)" if baseline_errors is None else ""))
    res.update({
        "root": os.fspath(root),
        "accuracy_by_severity": acc,
        "error_by_severity": {c: [100.0 * (1 - a) for a in v] for c, v in acc.items()},
        "severities": sev_used,
        "num_images": counts,
        "notes": notes,
        "names": {k: v for k, v in MCE_NAMES.items() if k in res},
    })
    if baseline_errors is not None:
        res["baseline"] = baseline_label
        res["baseline_errors"] = {c: float(baseline_errors[c]) for c in acc}
    return res


def corruption_table(res: Mapping) -> str:
    """The per-corruption table (errors in percent) and the three mean corruption errors, named."""
    errs = res["corruption_errors"]
    base = res.get("baseline_errors")
    alex = res.get("mce_alexnet_normalised") is not None
    sev_cols = max(len(v) for v in res["error_by_severity"].values())
    head = f"{'corruption':<18s} " + " ".join(f"{'s' + str(i + 1):>6s}" for i in range(sev_cols)) + \
        f" | {'E_c':>6s}" + (f" {'/AlexNet':>8s}" if alex else "") + (f" {'/base':>7s}" if base else "")
    lines = ["error (%) per corruption and severity; E_c = mean over severities", head, "-" * len(head)]
    for c, e in errs.items():
        row = f"{c:<18s} " + " ".join(f"{v:6.2f}" for v in res["error_by_severity"][c])
        row += "       " * (sev_cols - len(res["error_by_severity"][c]))
        row += f" | {100 * e:6.2f}"
        if alex:
            row += f" {100 * e / ALEXNET_ERRORS[c]:8.2f}"
        if base:
            row += f" {100 * e / base[c]:7.2f}"
        lines.append(row)
    lines.append("-" * len(head))
    lines.append(f"mCE, unnormalised (the paper's \"mCE\"; 100 * mean_c E_c): {res['mce_unnormalised']:.2f}")
    if alex:
        lines.append("rel. mCE, AlexNet-normalised (the paper's \"rel. mCE\" = Hendrycks' standard mCE; "
                     f"100 * mean_c E_c / E_c^AlexNet): {res['mce_alexnet_normalised']:.2f}")
    else:
        lines.append("rel. mCE, AlexNet-normalised: n/a (AlexNet constants exist only for the full ImageNet-C)")
    if base:
        lines.append(f"mCE normalised by the baseline {res.get('baseline')} (100 * mean_c E_c / E_c^base; "
                     f"the baseline itself = 100): {res['mce_baseline_normalised']:.2f}")
    for n in res.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


def load_baseline_errors(path: str) -> Tuple[Dict[str, float], str]:
    """``{corruption: E_c}`` from a baseline evaluation's ``metrics.json`` (or its folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--mce-baseline {path}: not found (give the metrics.json that "
                                f"tools/eval.py --corrupted-root wrote for the baseline run, or its folder)")
    with open(path) as f:
        m = json.load(f)
    errors = (m.get("corruption") or {}).get("corruption_errors")
    if not errors:
        raise ValueError(f"--mce-baseline {path} has no corruption results (run tools/eval.py --corrupted-root "
                         f"on the baseline first)")
    return {c: float(v) for c, v in errors.items()}, path


def imagenet_r_columns(num_classes: int) -> List[int]:
    """Head columns of the 200 ImageNet-R classes, in ImageNet-R's sorted-folder order."""
    from gpaco.metrics import imagenet_r_mask

    mask = imagenet_r_mask(num_classes)
    cols = mask.nonzero().flatten().tolist()
    assert cols == list(IMAGENET_R_INDICES)
    return cols


# --------------------------------------------------------------------------- building trees
