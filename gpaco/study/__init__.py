"""Studies: methods x seeds (x datasets) trained as ordinary run folders, and their report.

* :mod:`gpaco.study.presets`: the training flags a study starts from (the demos').
* :mod:`gpaco.study.plan`: the jobs, the run folders ``OUT/<dataset>/<method>/seed<k>`` and their state.
* :mod:`gpaco.study.runner`: one after another, ``--parallel N``, or a SLURM job array.
* :mod:`gpaco.study.stats`: mean, standard deviation, Student-t intervals, paired differences.
* :mod:`gpaco.study.report`: ``study.md``, ``study.csv``, ``study_runs.csv`` and the figures.
* :mod:`gpaco.study.cli`: ``gpaco-study`` / ``tools/study.py`` (docs/study.md).
"""
from gpaco.study.stats import Paired, Summary, paired_difference, summarize, t_quantile

__all__ = ["Paired", "Summary", "paired_difference", "summarize", "t_quantile"]
