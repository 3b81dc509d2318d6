"""Adversarial robustness evaluation (``tools/eval_adversarial.py``): clean, PGD-20, CW-20 and
AutoAttack accuracy under an L∞ budget, resumable batch by batch.

    python tools/eval_adversarial.py --checkpoint runs/ikl_at/best.pth --dataset cifar10 --data-root data/cifar
    python tools/eval_adversarial.py --weights model-cifar10.pt --arch wrn34_10 --num-classes 10 \\
        --dataset cifar10 --data-root data/cifar --norm none

Protocol (docs/adversarial.md). The model runs in eval mode on pixels in [0, 1]: a network
trained on normalised inputs is wrapped with its normalisation (:class:`PixelSpaceModel`), so
the radius is always measured in pixel space. The first ``max_images`` images of the test split
(10,000, all of CIFAR's) are attacked in batches of ``batch_size`` (200), as the DKL/IKL
evaluation script does. Rows (:data:`ATTACKS`):

* ``clean``: accuracy on the unperturbed images.
* ``pgd20``: L∞ PGD, ε 8/255, 20 sign-gradient steps of 2/255 on the cross-entropy, from a
  uniform random start in the ε-ball clipped to [0, 1]: the budget and start of the PGD
  evaluation of the adversarial-training literature that DKL builds on (Rice et al.'s
  ``attack_pgd``, ``--epsilon 8 --pgd-alpha 2``; TRADES' ``pgd_attack_cifar10.py`` runs the same
  20-step, batch-200 attack with ε 0.031 and steps of 0.003).
* ``cw20``: the same attack on Carlini-Wagner's margin (κ 50) instead of the cross-entropy.
* ``autoattack``: AutoAttack (Croce & Hein 2020) through the optional package ``pyautoattack``
  (``pip install 'gpaco[autoattack]'``), standard version: APGD-CE, APGD-T (9 targets), FAB-T
  (9 targets), Square (5,000 queries).

An image counts as robust when the model classifies the clean image and every point the attack
tried correctly (PGD: the start and each iterate, which is what an attack that stops at the
first misclassification, as Rice et al.'s, counts; AutoAttack: its own verdict and a forward of
what it returns). Robust accuracy is therefore never above the clean accuracy.

Resuming. After every batch the per-image flags (clean-correct and robust-correct) go to
``adversarial_state.json`` in the output folder through an atomic rename, with the identity of
the run (the weights' SHA-256, the data, the pixel pipeline, the attacks and their settings,
the image count and the batch size). Running the same command again skips the finished batches;
different settings are refused in one line naming the flags. Every batch's randomness is a
function of (seed, attack, batch index) only (:func:`batch_seed`), so a resumed run ends with
the numbers of an uninterrupted one. SIGTERM / SIGINT / SIGUSR1 stop after the running batch
(a second signal stops at once); a kill loses at most the running batch.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import signal
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gpaco.attacks import cw_margin_loss, pgd_attack, uniform_start
from gpaco.checkpoint import CheckpointError, remove_stale_temporaries
from gpaco.engine.args import FlagError, HelpFormatter, check_finite, check_positive
from gpaco.engine.cli import add_debug_flag, run_cli
from gpaco.engine.lifecycle import claim_eval_dir
from gpaco.engine.logging import print_main, to_jsonable, write_json
from gpaco.engine.preemption import PreemptionHandler

__all__ = [
    "ATTACKS", "AUTOATTACK_HINT", "STATE_NAME", "RESULT_NAME", "AttackSettings", "BatchResult", "PixelSpaceModel",
    "batch_seed", "batch_grid", "attack_batch", "pgd_robust", "autoattack_robust", "weights_sha256",
    "labels_sha256", "ResumeState", "evaluate_robustness", "results_table", "autoattack_available",
    "build_parser", "main", "cli",
]

#: The rows, in the order they run: name -> what it is.
ATTACKS: Dict[str, str] = {
    "clean": "clean accuracy (no attack)",
    "pgd20": "PGD-20: L∞ PGD on the cross-entropy, 20 steps, uniform random start",
    "cw20": "CW-20: L∞ PGD on the Carlini-Wagner margin (kappa 50), 20 steps, uniform random start",
    "autoattack": "AutoAttack (pyautoattack): APGD-CE, APGD-T, FAB-T, Square",
}
_PGD_OBJECTIVES: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "pgd20": lambda logits, y: F.cross_entropy(logits, y),
    "cw20": lambda logits, y: cw_margin_loss(logits, y),
}
AUTOATTACK_HINT = "pip install 'gpaco[autoattack]'"
STATE_NAME = "adversarial_state.json"
RESULT_NAME = "adversarial.json"
_STATE_FORMAT = "gpaco-adversarial-state/1"
#: A stop signal and the same one again within this many seconds is one request (a scheduler
#: that signals twice); later, or another signal, stops at once.
_REPEAT_GRACE_S = 1.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


# --------------------------------------------------------------------------- settings and model


@dataclass(frozen=True)
class AttackSettings:
    """What is attacked and how: the rows (:data:`ATTACKS` names, in order), the L∞ radius and the
    PGD/CW step in pixel units ([0, 1] images), their step count, the seed every batch's randomness
    derives from, AutoAttack's version (standard / plus / rand), and ``autoattack_budget``: None,
    or (dry runs) the iterations, target classes and queries each AutoAttack stage is cut to."""

    attacks: Tuple[str, ...] = tuple(ATTACKS)
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 20
    seed: int = 0
    autoattack_version: str = "standard"
    autoattack_budget: Optional[int] = None

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(f"attacks must be a non-empty subset of {', '.join(ATTACKS)}; got {list(self.attacks)}")
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks repeat a name: {list(self.attacks)}")
        if not (self.epsilon >= 0 and self.step_size >= 0 and self.steps >= 0):
            raise ValueError(f"epsilon, step_size and steps must be >= 0, got {self.epsilon}, {self.step_size}, "
                             f"{self.steps}")

    def identity(self) -> Dict[str, Any]:
        """The settings a resume must share (radius and step in 1/255 units, as the flags take them)."""
        return {"attacks": list(self.attacks), "epsilon": _in_255(self.epsilon), "step_size": _in_255(self.step_size),
                "steps": self.steps, "seed": self.seed, "autoattack_version": self.autoattack_version,
                "autoattack_budget": self.autoattack_budget}


def _in_255(value: float) -> float:
    return round(value * 255, 6)


class PixelSpaceModel(nn.Module):
    """A classifier seen from pixel space: ``forward(x)``, ``x`` [B, C, H, W] in [0, 1] -> logits
    [B, num_classes]. ``mean``/``std`` (per channel): the normalisation the network was trained
    with, applied first (None: the network takes pixels as they are, ``--norm none``).
    ``forward``: how logits are made from the network (a method's ``eval_forward(net, x)``;
    default ``net(x)``). Always in eval mode (BatchNorm uses its running statistics); the
    parameters take no gradient, since attacks differentiate with respect to the images only."""

    def __init__(self, net: nn.Module, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 forward: Optional[Callable[[nn.Module, Tensor], Tensor]] = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.net = net.requires_grad_(False)
        self._forward = forward
        as_buffer = (lambda v: None if v is None else torch.tensor([float(c) for c in v]).view(1, -1, 1, 1))
        self.register_buffer("mean", as_buffer(mean), persistent=False)
        self.register_buffer("std", as_buffer(std), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> "PixelSpaceModel":
        """Stays in eval mode, whatever an attack library asks."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if self.mean is not None:
            images = (images - self.mean) / self.std
        return self.net(images) if self._forward is None else self._forward(self.net, images)


# --------------------------------------------------------------------------- one batch

_MASK64 = (1 << 64) - 1


def batch_seed(seed: int, attack: str, batch_index: int) -> int:
    """The seed of one batch of one attack: a 63-bit mix (splitmix64 steps) of ``seed``, the
    CRC-32 of the attack's name and the batch index, so that no batch's draws depend on which
    batches ran before it in this process."""
    h = 0
    for x in (seed, zlib.crc32(attack.encode()), batch_index):
        h = (h + (x & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def batch_grid(num_images: int, batch_size: int) -> List[Tuple[int, int]]:
    """``[(start, end), ...]``: the batches of the first ``num_images`` images, in order."""
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    return [(s, min(s + batch_size, num_images)) for s in range(0, num_images, batch_size)]


@dataclass
class BatchResult:
    """One attack on one batch: per-image flags [B] (bool, CPU) and what else the attack reported
    (AutoAttack: ``stages`` {stage: robust images after it}, ``warnings``, ``outside_ball``)."""

    clean: Tensor
    robust: Tensor
    extra: Dict[str, Any] = field(default_factory=dict)


def pgd_robust(model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor,
               objective: Callable[[Tensor, Tensor], Tensor], *, epsilon: float, step_size: float, steps: int,
               start: Optional[Tensor]) -> Tensor:
    """Whether each image [B] resists :func:`gpaco.attacks.pgd_attack` on ``objective(logits,
    labels)``: the model is right on the start point, on every iterate and on the result (an
    image once misclassified stays counted as broken)."""
    wrong = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)

    def tracked(logits: Tensor) -> Tensor:
        nonlocal wrong
        wrong = wrong | (logits.detach().argmax(1) != labels)
        return objective(logits, labels)

    x_adv = pgd_attack(model, images, tracked, epsilon=epsilon, step_size=step_size, steps=steps, start=start)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == labels) & ~wrong


class _AutoAttackLog(logging.Handler):
    """What pyautoattack logs while one batch runs: its warnings, and the robust accuracy after
    each stage ("robust accuracy after APGD-CE: 50.00% ..."), for the per-stage table."""

    _STAGE = re.compile(r"robust accuracy after ([\w-]+): ([\d.]+)%")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.percent: Dict[str, float] = {}
        self.warnings: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.warnings.append(" ".join(message.split()))
            return
        match = self._STAGE.search(message)
        if match:
            self.percent[match.group(1).lower()] = float(match.group(2))


def autoattack_available() -> bool:
    """Whether the optional package ``pyautoattack`` is installed."""
    return importlib.util.find_spec("pyautoattack") is not None


def autoattack_robust(model: nn.Module, images: Tensor, labels: Tensor, *, epsilon: float, seed: int,
                      version: str = "standard", budget: Optional[int] = None) -> Tuple[Tensor, Dict[str, Any]]:
    """Whether each image [B] resists AutoAttack (L∞, radius ``epsilon``, ``version``) run on
    this batch alone with ``seed``; and ``{"stages": {stage: robust images after it} (None when
    the package's log could not be read), "warnings": [...], "outside_ball": n}``.

    ``budget`` (dry runs): every stage's iterations, target classes and queries cut to this
    many, so that a configuration check takes seconds. The package seeds every stage with
    ``seed`` (torch's global generator); ``outside_ball``
    counts returned images farther than ``epsilon`` (or outside [0, 1]): none, unless the package
    misbehaves; the robust flags still follow its verdict and a forward of what it returned."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise ImportError(f"AutoAttack needs the optional package pyautoattack: {AUTOATTACK_HINT}") from None
    log = logging.getLogger("auto-attack")
    handler, level, propagate = _AutoAttackLog(), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # its warnings are printed once per run by the caller, not once per batch
    try:
        adversary = AutoAttack(model, norm="Linf", eps=epsilon, version=version, device=images.device, seed=seed)
        order = list(adversary.attacks_to_run)
        if budget is not None:
            adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = budget
            adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = budget
            adversary.square.n_queries = budget
        x_adv, y_adv = adversary.run_standard_evaluation(images, labels, batch_size=len(images))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == labels) & (y_adv == labels)
        step = (x_adv - images).abs().flatten(1).amax(1)
        outside = (step > epsilon + 1e-5) | (x_adv.flatten(1).amin(1) < 0) | (x_adv.flatten(1).amax(1) > 1)
    return robust, {"stages": _stage_counts(handler.percent, order, len(images)),
                    "warnings": sorted(set(handler.warnings)), "outside_ball": int(outside.sum())}


def _stage_counts(percent: Mapping[str, float], order: Sequence[str], n: int) -> Optional[Dict[str, int]]:
    """Robust images after each stage from the logged percentages (two decimals: exact counts up
    to 10,000 images). A stage the package skipped because nothing was left counts 0; None when
    a stage cannot be told (another log format)."""
    if n > 10_000:
        return None
    counts: Dict[str, int] = {}
    for stage in order:
        if stage in percent:
            counts[stage] = int(round(percent[stage] / 100 * n))
        elif counts and list(counts.values())[-1] == 0:
            counts[stage] = 0
        else:
            return None
    return counts


def attack_batch(attack: str, model: nn.Module, images: Tensor, labels: Tensor, settings: AttackSettings, *,
                 batch_index: int, device: Optional[torch.device] = None) -> BatchResult:
    """Run ``attack`` on one batch: ``images`` [B, C, H, W] in [0, 1] and ``labels`` [B] (any
    device; moved to ``device``, default the images'). Its randomness comes from
    :func:`batch_seed` alone; PGD's uniform start is drawn on the CPU, so it is the same on any
    device."""
    device = torch.device(device) if device is not None else images.device
    seed = batch_seed(settings.seed, attack, batch_index)
    start = None
    if attack in _PGD_OBJECTIVES:
        generator = torch.Generator().manual_seed(seed)
        start = uniform_start(images.detach().cpu().float(), settings.epsilon, generator=generator).to(device)
    images = images.to(device, torch.float32, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    with torch.no_grad():
        clean = model(images).argmax(1) == labels
    extra: Dict[str, Any] = {}
    if attack == "clean":
        robust = clean
    elif attack in _PGD_OBJECTIVES:
        robust = clean & pgd_robust(model, images, labels, _PGD_OBJECTIVES[attack], epsilon=settings.epsilon,
                                    step_size=settings.step_size, steps=settings.steps, start=start)
    elif attack == "autoattack":
        flags, extra = autoattack_robust(model, images, labels, epsilon=settings.epsilon, seed=seed,
                                         version=settings.autoattack_version, budget=settings.autoattack_budget)
        robust = clean & flags
    else:
        raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    return BatchResult(clean.cpu(), robust.cpu(), extra)


# --------------------------------------------------------------------------- identity


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state (every tensor's name, dtype, shape and bytes, in name order):
    the same weights give the same digest wherever the file lives."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def labels_sha256(dataset: Dataset, num_images: int) -> Optional[str]:
    """SHA-256 of the first ``num_images`` labels (``dataset.targets``); None without targets."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    return hashlib.sha256(",".join(str(int(t)) for t in list(targets)[:num_images]).encode()).hexdigest()


#: identity key -> the flag(s) that set it, for the message that refuses a resume.
_IDENTITY_FLAGS = {
    "model": "--checkpoint/--weights", "data": "--dataset/--data-root/--test-list",
    "pixels": "--norm/--image-size/--resize-size/--interpolation", "images": "--max-images",
    "batch_size": "--batch-size", "attacks": "--attacks", "epsilon": "--epsilon", "step_size": "--step-size",
    "steps": "the PGD step count", "seed": "--seed", "autoattack_version": "--autoattack-version",
    "autoattack_budget": "AutoAttack's budget",
}


def _show(key: str, value: Any) -> str:
    if key == "model" and isinstance(value, Mapping) and "weights_sha256" in value:
        return f"weights sha256 {str(value['weights_sha256'])[:12]}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {str(v)[:12] if k.endswith('sha256') and v else v}" for k, v in value.items())
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- the state file


class ResumeState:
    """``adversarial_state.json``: the run's identity and, per attack and batch, the images it
    covers, the per-image flags (``"0110..."``, clean-correct and robust-correct), its seconds and
    the session that computed it. Rewritten atomically after every batch."""

    def __init__(self, path: str, identity: Mapping[str, Any], grid: Sequence[Tuple[int, int]],
                 batches: Optional[Dict[str, Dict[str, dict]]] = None,
                 sessions: Optional[List[dict]] = None) -> None:
        self.path, self.identity, self.grid = path, dict(identity), list(grid)
        self.batches: Dict[str, Dict[str, dict]] = batches or {}
        self.sessions: List[dict] = sessions or []

    @classmethod
    def open(cls, path: str, identity: Mapping[str, Any], grid: Sequence[Tuple[int, int]]) -> "ResumeState":
        """The state at ``path`` when it was started with ``identity`` (FlagError naming the flags
        that differ otherwise), a new one when there is none (nothing is written yet)."""
        identity = json.loads(json.dumps(to_jsonable(identity)))  # compared as the file will hold it
        if not os.path.exists(path):
            return cls(path, identity, grid)
        try:
            with open(path) as f:
                saved = json.load(f)
            if not isinstance(saved, dict) or saved.get("format") != _STATE_FORMAT:
                raise ValueError(f"format {saved.get('format') if isinstance(saved, dict) else None!r}")
            state = cls(path, saved["identity"], grid, saved["batches"], saved["sessions"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not a state this tool wrote ({type(e).__name__}: {e}); remove it, or "
                                  f"pass --overwrite to start again") from None
        changed = [f"{_IDENTITY_FLAGS.get(k, k)} {_show(k, identity.get(k))} (was {_show(k, state.identity.get(k))})"
                   for k in dict.fromkeys([*state.identity, *identity])
                   if identity.get(k) != state.identity.get(k)]
        if changed:
            raise FlagError(f"{path} was started with other settings: {'; '.join(changed)}; run the same command "
                            f"as before to continue it, or pass --overwrite (or another --output-dir) to start "
                            f"again")
        state._check_batches()
        return state

    def _check_batches(self) -> None:
        for attack, records in self.batches.items():
            for key, rec in records.items():
                i = int(key) if str(key).isdigit() else -1
                ok = attack in self.identity["attacks"] and 0 <= i < len(self.grid) and \
                    list(rec.get("images", ())) == list(self.grid[i])
                n = self.grid[i][1] - self.grid[i][0] if ok else 0
                ok = ok and all(isinstance(rec.get(k), str) and len(rec[k]) == n and set(rec[k]) <= {"0", "1"}
                                for k in ("clean", "robust"))
                if not ok:
                    raise CheckpointError(f"{self.path}: the record of {attack} batch {key} is damaged; remove the "
                                          f"file, or pass --overwrite to start again")

    def begin_session(self, **info: Any) -> int:
        """Number this run (1, 2, ... across resumes) and note what it ran with."""
        self.sessions.append({"started": datetime.datetime.now().isoformat(timespec="seconds"), **info})
        return len(self.sessions)

    def done(self, attack: str, index: int) -> bool:
        return str(index) in self.batches.get(attack, {})

    def record(self, attack: str, index: int, result: BatchResult, *, seconds: float, session: int) -> None:
        """Add one finished batch and write the file (atomically: a kill leaves the previous one)."""
        rec = {"images": list(self.grid[index]), "clean": _bits(result.clean), "robust": _bits(result.robust),
               "seconds": round(seconds, 3), "session": session}
        rec.update({k: v for k, v in result.extra.items() if v not in (None, [], 0)})
        self.batches.setdefault(attack, {})[str(index)] = rec
        self.save()

    def save(self) -> None:
        write_json(self.path, {"format": _STATE_FORMAT, "identity": self.identity, "sessions": self.sessions,
                               "batches": self.batches})

    def records(self, attack: str) -> List[dict]:
        """The finished batches of ``attack``, in image order."""
        return [rec for _, rec in sorted(self.batches.get(attack, {}).items(), key=lambda kv: int(kv[0]))]

    def flags(self, attack: str) -> Tuple[Tensor, Tensor]:
        """(clean, robust) [N] bool over the finished batches of ``attack``, in image order."""
        recs = self.records(attack)
        return tuple(torch.tensor([c == "1" for rec in recs for c in rec[key]], dtype=torch.bool)
                     for key in ("clean", "robust"))


def _bits(flags: Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


# --------------------------------------------------------------------------- the run


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds)))) if math.isfinite(seconds) else "?"


def _row(state: ResumeState, attack: str) -> Dict[str, Any]:
    recs = state.records(attack)
    images = sum(len(r["robust"]) for r in recs)
    correct = sum(r["robust"].count("1") for r in recs)
    return {"attack": attack, "accuracy": 100.0 * correct / images if images else None, "correct": correct,
            "images": images, "seconds": round(sum(r["seconds"] for r in recs), 3), "description": ATTACKS[attack]}


def _stages(state: ResumeState) -> Optional[List[Dict[str, Any]]]:
    """AutoAttack's robust accuracy after each stage over all images (None when a batch's log
    could not be read)."""
    recs = state.records("autoattack")
    if not recs or any(r.get("stages") is None and r["clean"].count("1") for r in recs):
        return None
    images = sum(len(r["clean"]) for r in recs)
    names = next((list(r["stages"]) for r in recs if r.get("stages")), [])
    rows = [{"stage": "clean", "accuracy": 100.0 * sum(r["clean"].count("1") for r in recs) / images}]
    for name in names:
        rows.append({"stage": name, "accuracy": 100.0 * sum((r.get("stages") or {}).get(name, 0) for r in recs)
                     / images})
    return rows


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a markdown table: attack, accuracy (%), images, seconds."""
    lines = ["| attack | accuracy (%) | images | seconds |", "|---|---:|---:|---:|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        lines.append(f"| {r['attack']} | {acc} | {r['images']} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def _ignore_stop_signals_too(worker_id: int) -> None:
    """Loader workers leave stopping to the main process (Ctrl-C included), which finishes the batch."""
    from gpaco.data.workers import ignore_stop_signals

    ignore_stop_signals(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def evaluate_robustness(
    model: nn.Module,
    dataset: Dataset,
    *,
    output_dir: str,
    settings: AttackSettings = AttackSettings(),
    batch_size: int = 200,
    max_images: int = 10_000,
    identity: Optional[Mapping[str, Any]] = None,
    info: Optional[Mapping[str, Any]] = None,
    device: Optional[torch.device] = None,
    workers: int = 0,
    overwrite: bool = False,
    stop_after_batches: Optional[int] = None,
    log: Callable[[str], None] = print_main,
) -> Dict[str, Any]:
    """Attack the first ``max_images`` images of ``dataset`` (``(image [C, H, W] in [0, 1],
    label)`` pairs) with every attack of ``settings``, ``batch_size`` at a time, resuming what
    ``output_dir`` holds (see the module docstring).

    ``model``: pixels in [0, 1] -> logits (a :class:`PixelSpaceModel`), already on ``device``.
    ``identity``: what else a resume must share (``model``: the weights' digest, ``data``,
    ``pixels``), next to the settings, the image count and the batch size. ``info``: noted in
    the state and the result, never compared (the checkpoint's path). ``overwrite``: discard
    the state and results in ``output_dir``. ``stop_after_batches``: leave after that many
    batches of this run, as if stopped by a signal.

    Returns the result written to ``adversarial.json`` when every batch is done: ``rows`` (per
    attack ``accuracy`` in %, ``correct``, ``images``, ``seconds`` of compute summed over the
    batches), ``autoattack_stages``, ``autoattack_warnings``, ``protocol``...; when stopped
    early, ``{"complete": False, "stopped": why, "rows": [...so far], ...}`` and nothing but the
    state is written.
    """
    if stop_after_batches is not None and stop_after_batches < 1:
        raise ValueError(f"stop_after_batches must be >= 1, got {stop_after_batches}")
    if device is None:
        device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    device = torch.device(device)
    num_images = min(int(max_images), len(dataset))
    grid = batch_grid(num_images, batch_size)
    claim_eval_dir(output_dir, overwrite=overwrite)  # created, writable, locked against a second evaluation
    remove_stale_temporaries(output_dir)
    state_path, result_path = os.path.join(output_dir, STATE_NAME), os.path.join(output_dir, RESULT_NAME)
    if overwrite:
        for path in (state_path, result_path):
            if os.path.exists(path):
                os.remove(path)
    elif os.path.exists(result_path) and not os.path.exists(state_path):
        raise FlagError(f"{output_dir} holds results ({RESULT_NAME}) without the {STATE_NAME} to resume from; give "
                        f"another --output-dir, or --overwrite to replace them")
    full_identity = {**dict(identity or {}), "images": num_images, "batch_size": batch_size, **settings.identity()}
    state = ResumeState.open(state_path, full_identity, grid)
    session = state.begin_session(device=str(device), pid=os.getpid(), **dict(info or {}))
    state.save()  # the identity is on disk before the first batch: a resume with other flags is refused
    seen_warnings: set = set()
    ran, stopped = 0, None
    log(f"{num_images} images in {len(grid)} batches of {batch_size}; L∞ epsilon {_in_255(settings.epsilon):g}/255"
        f"{'' if session == 1 else f'; resuming {state_path} (session {session})'}")
    with PreemptionHandler(_STOP_SIGNALS, grace_s=_REPEAT_GRACE_S) as preempt:
        for attack in settings.attacks:
            todo = [i for i in range(len(grid)) if not state.done(attack, i)]
            done_before = len(grid) - len(todo)
            if not todo:
                log(f"{attack}: all {len(grid)} batches done earlier")
                continue
            log(f"{attack}: {ATTACKS[attack]}" + (f"; {done_before} of {len(grid)} batches done earlier"
                                                  if done_before else ""))
            loader = DataLoader(dataset, batch_sampler=[list(range(*grid[i])) for i in todo], num_workers=workers,
                                pin_memory=device.type == "cuda",
                                worker_init_fn=_ignore_stop_signals_too if workers else None)
            t_attack, images_here = time.perf_counter(), 0
            for n, (index, (images, labels)) in enumerate(zip(todo, loader), 1):
                t0 = time.perf_counter()
                result = attack_batch(attack, model, images, labels, settings, batch_index=index, device=device)
                state.record(attack, index, result, seconds=time.perf_counter() - t0, session=session)
                ran += 1
                images_here += len(labels)
                for w in result.extra.get("warnings", []):
                    if w not in seen_warnings:
                        seen_warnings.add(w)
                        log(f"autoattack warning: {w}")
                if result.extra.get("outside_ball"):
                    log(f"warning: AutoAttack returned {result.extra['outside_ball']} images of batch {index} "
                        f"outside the epsilon-ball or [0, 1]")
                row = _row(state, attack)
                elapsed = time.perf_counter() - t_attack
                clean_pct = 100.0 * sum(r["clean"].count("1") for r in state.records(attack)) / row["images"]
                log(f"[{attack}][{done_before + n:>{len(str(len(grid)))}}/{len(grid)}] images {row['images']}/"
                    f"{num_images} robust {row['accuracy']:.2f} clean {clean_pct:.2f} "
                    f"{images_here / elapsed:.1f} img/s eta {_duration(elapsed / n * (len(todo) - n))}")
                if preempt.signal_name is not None:
                    stopped = preempt.signal_name
                elif stop_after_batches is not None and ran >= stop_after_batches:
                    stopped = f"--stop-after-batches {stop_after_batches}"
                if stopped:
                    break
            if stopped:
                break
    if stopped and all(state.done(a, i) for a in settings.attacks for i in range(len(grid))):
        stopped = None  # it stopped after the very last batch: nothing is left to resume
    common = {"output_dir": output_dir, "state": state_path, "images": num_images, "batch_size": batch_size,
              "batches": len(grid), "session": session}
    if stopped:
        finished = sum(len(state.batches.get(a, {})) for a in settings.attacks)
        log(f"stopped ({stopped}) after {ran} batches of this run; {finished} of {len(grid) * len(settings.attacks)} "
            f"batches are saved in {state_path}; run the same command again to continue")
        return {"complete": False, "stopped": stopped, "rows": [_row(state, a) for a in settings.attacks], **common}
    warnings = sorted({w for a in settings.attacks for r in state.records(a) for w in r.get("warnings", [])})
    result = {
        "complete": True, **common,
        "rows": [_row(state, a) for a in settings.attacks],
        "protocol": {"norm": "Linf", "epsilon": settings.epsilon, "epsilon_255": _in_255(settings.epsilon),
                     "step_size": settings.step_size, "step_size_255": _in_255(settings.step_size),
                     "steps": settings.steps, "seed": settings.seed,
                     "autoattack_version": settings.autoattack_version,
                     "robust": "right on the clean image and on every point the attack tried"},
        "identity": state.identity,
        "info": dict(info or {}),
        "sessions": len(state.sessions),
    }
    if "autoattack" in settings.attacks:
        result["autoattack_stages"] = _stages(state)
        result["autoattack_warnings"] = warnings
    write_json(result_path, result)
    log(results_table(result["rows"]))
    if result.get("autoattack_stages"):
        log("AutoAttack, robust accuracy after each stage: " + " -> ".join(
            f"{s['stage']} {s['accuracy']:.2f}" for s in result["autoattack_stages"]))
    log(f"wrote {result_path}")
    return result


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from gpaco.data.transforms import NORMALIZATION
    from gpaco.methods import method_names

    p = argparse.ArgumentParser(
        prog="tools/eval_adversarial.py", formatter_class=HelpFormatter,
        description="Adversarial robustness of a classifier: clean, PGD-20, CW-20 and AutoAttack accuracy under an "
                    "L-inf budget (default 8/255) on the first --max-images test images, resumable per batch: run "
                    "the same command again after a stop (docs/adversarial.md).")
    g = p.add_argument_group("model (one of --checkpoint, --weights)")
    g.add_argument("--checkpoint", default=None, metavar="RUN_OR_FILE",
                   help="a gpaco run folder (its best.pth) or any checkpoint tools/eval.py reads; the model, its "
                        "normalisation and image size come from the file")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="an original adversarial-training checkpoint (a DataParallel state dict, 'module.' keys); "
                        "needs --arch and --num-classes")
    g.add_argument("--arch", "-a", default=None, help="backbone (--weights: required, e.g. wrn34_10; --checkpoint: "
                                                      "default the file's)")
    g.add_argument("--method", default=None, choices=method_names("classification"),
                   help="model type of --checkpoint (default: the file's)")
    g.add_argument("--num-classes", type=int, default=None, help="class count (--weights: required)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None, choices=("split", "cifar10", "cifar100"),
                   help="cifar10/cifar100: the CIFAR test set under --data-root; split: --test-list (default: split "
                        "with a --test-list, else the checkpoint's training --dataset)")
    g.add_argument("--data-root", default="data", help="CIFAR folder, or the folder --test-list paths are relative to")
    g.add_argument("--test-list", default=None, help="split file of the images to attack ('relative/path label')")
    g.add_argument("--max-images", type=int, default=10_000,
                   help="attack the first N images of the test split (the original: the first 10,000)")
    g.add_argument("--norm", default=None, choices=tuple(dict.fromkeys((*NORMALIZATION, "none"))),
                   help="the normalisation the network was trained with, applied inside the model so that attacks "
                        "work on pixels in [0, 1] (default: the checkpoint's; --weights: none)")
    g.add_argument("--image-size", type=int, default=None, help="evaluation crop (default: the checkpoint's; 32)")
    g.add_argument("--resize-size", type=int, default=None,
                   help="evaluation resize before the crop (default: the image size up to 32 px, as CIFAR's test "
                        "transform; else the checkpoint's, or image-size / 0.875)")
    g.add_argument("--interpolation", default=None, choices=("bilinear", "bicubic"),
                   help="resize interpolation (default: the checkpoint's, else bilinear)")
    g.add_argument("--workers", "-j", type=int, default=2, help="data loader worker processes (0: in this process)")
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS), metavar="ATTACK",
                   help=f"rows to compute, in this order: {', '.join(ATTACKS)}")
    g.add_argument("--epsilon", type=float, default=8.0, help="L-inf radius in units of 1/255 of the pixel range")
    g.add_argument("--step-size", type=float, default=2.0, help="PGD-20 / CW-20 step in units of 1/255")
    g.add_argument("--autoattack-version", default="standard", choices=("standard", "plus", "rand"),
                   help="AutoAttack version (the original: standard)")
    g.add_argument("--seed", type=int, default=0, help="every batch's random draws derive from (seed, attack, batch)")
    g.add_argument("--batch-size", "-b", type=int, default=200, help="images per batch (the original: 200)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=None,
                   help="where adversarial.json and the resume state go (default: CHECKPOINT_DIR/adversarial)")
    g.add_argument("--overwrite", action="store_true", help="discard the state and results in --output-dir and "
                                                            "start again")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda when available)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels: a batch computed again gives the same flags (slower)")
    g.add_argument("--stop-after-batches", type=int, default=None, metavar="K",
                   help="leave after K batches of this run, as if stopped by a signal (split a long evaluation "
                        "over several jobs; tests)")
    g.add_argument("--dry-run", action="store_true",
                   help="check the configuration in seconds: every row on 2 images (synthetic when the data is "
                        "absent, random weights when the checkpoint is), one PGD step, one iteration per AutoAttack "
                        "stage, labels = the model's predictions; writes nothing")
    add_debug_flag(p)
    return p


def _checkpoint_file(path: str, dry_run: bool = False) -> Optional[str]:
    """``--checkpoint``: a run folder's best.pth, or the file itself (None: absent in a dry run)."""
    if dry_run and not os.path.exists(path) and not os.path.isfile(os.path.join(path, "best.pth")):
        return None
    if os.path.isdir(path):
        best = os.path.join(path, "best.pth")
        if not os.path.isfile(best):
            raise FlagError(f"--checkpoint {path}: the folder has no best.pth (give a gpaco run folder, or the "
                            f"checkpoint file itself)")
        return best
    if not os.path.isfile(path):
        raise FlagError(f"--checkpoint {path}: no such file or folder")
    return path


def _validate(args: argparse.Namespace) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FlagError("tools/eval_adversarial.py runs in one process (its batches resume, they are not sharded): "
                        "launch it with NGPUS=1, or with python directly")
    if (args.checkpoint is None) == (args.weights is None):
        raise FlagError("give the model as --checkpoint RUN_OR_FILE, or as --weights FILE --arch A --num-classes N "
                        "(one of the two)")
    if args.weights is not None:
        if args.arch is None or args.num_classes is None:
            raise FlagError("--weights needs --arch and --num-classes (an original checkpoint does not say them)")
        if args.method is not None:
            raise FlagError("--method is for --checkpoint; --weights is a plain classifier")
        if not os.path.isfile(args.weights) and not args.dry_run:
            raise FlagError(f"--weights {args.weights}: no such file")
    if len(set(args.attacks)) != len(args.attacks):
        raise FlagError(f"--attacks names a row twice: {' '.join(args.attacks)}")
    check_finite(args, ("epsilon", "step_size"))
    check_positive(args, ("epsilon", "step_size", "workers"), allow_zero=True)
    check_positive(args, ("batch_size", "max_images", "num_classes", "stop_after_batches", "image_size",
                          "resize_size"))
    if "autoattack" in args.attacks and not autoattack_available():
        raise FlagError(f"--attacks autoattack needs the optional package pyautoattack: {AUTOATTACK_HINT}")


def _load_model(args: argparse.Namespace) -> Tuple[nn.Module, Optional[Callable], dict, dict]:
    """(network, its eval forward or None, the checkpoint's training flags, what to note about it)."""
    from gpaco.methods import get_method
    from gpaco.methods.rebuild import build_model_from_checkpoint
    from gpaco.models import build_classifier, load_original_checkpoint
    from gpaco.models.convert import CheckpointMismatchError, read_checkpoint

    if args.weights is not None:
        try:
            net = build_classifier(args.arch, args.num_classes)
        except (ValueError, KeyError, RuntimeError) as e:
            raise FlagError(f"--arch {args.arch}: {e}") from None
        if not os.path.isfile(args.weights):  # a dry run: random weights
            print_main(f"dry run: --weights {args.weights} is absent; random weights")
            return net, None, {}, {"weights": args.weights, "arch": args.arch, "num_classes": args.num_classes}
        try:
            load_original_checkpoint(net, args.weights, args.arch)
        except CheckpointError as e:
            raise FlagError(f"--weights {args.weights} does not fit --arch {args.arch} with --num-classes "
                            f"{args.num_classes}: {e}") from None
        return net, None, {}, {"weights": args.weights, "arch": args.arch, "num_classes": args.num_classes}
    path = _checkpoint_file(args.checkpoint, args.dry_run)
    if path is None:
        if args.arch is None:
            raise FlagError(f"--dry-run: --checkpoint {args.checkpoint} is absent; give --arch to check the "
                            f"configuration with random weights")
        classes = args.num_classes or {"cifar10": 10, "cifar100": 100}.get(args.dataset, 10)
        try:
            net, _ = build_model_from_checkpoint(None, method=args.method or "ce", arch=args.arch, num_classes=classes)
        except CheckpointError as e:
            raise FlagError(str(e)) from None
        print_main(f"dry run: --checkpoint {args.checkpoint} is absent; random weights")
        method = args.method or "ce"
        return net, get_method(method).eval_forward, {}, {"checkpoint": args.checkpoint, "method": method,
                                                         "arch": args.arch}
    try:
        loaded = read_checkpoint(path)
        net, report = build_model_from_checkpoint(loaded, method=args.method, arch=args.arch,
                                                  num_classes=args.num_classes)
    except CheckpointMismatchError as e:
        raise FlagError(str(e)) from None
    except (CheckpointError, FileNotFoundError) as e:
        raise FlagError(f"--checkpoint {path}: {e}") from None
    print_main(report.summary())
    info = {"checkpoint": path, "method": report.method, "arch": report.arch}
    return net, get_method(report.method).eval_forward, loaded.meta.get("args") or {}, info


def _pixel_settings(args: argparse.Namespace, train_args: Mapping[str, Any]) -> dict:
    """norm, image_size, resize_size, interpolation: the flags, else the checkpoint's (tools/eval.py's
    rule), else the adversarial-training defaults (no normalisation, 32 px)."""
    from gpaco.classification.evaluate import resolve_from_checkpoint

    defaults = {"norm": "none", "image_size": 32} if args.weights is not None else {}
    scratch = argparse.Namespace(method="-", arch="-", proj_dim=0, queue_size=0, norm=args.norm,
                                 image_size=args.image_size, resize_size=args.resize_size,
                                 interpolation=args.interpolation)
    resolve_from_checkpoint(scratch, {**defaults, **dict(train_args)})
    if scratch.resize_size is None and scratch.image_size <= 32:
        scratch.resize_size = scratch.image_size  # CIFAR-sized: no upscale-and-crop, as CIFAR's test transform
    return {"norm": scratch.norm, "image_size": scratch.image_size, "resize_size": scratch.resize_size,
            "interpolation": scratch.interpolation}


def _pixel_dataset(args: argparse.Namespace, pixels: Mapping[str, Any], num_classes: int) -> Dataset:
    """The test split as pixels in [0, 1] (the evaluation transform without normalisation)."""
    from gpaco.data.build import SyntheticDataset, data_available, is_cifar
    from gpaco.data.cifar_lt import CIFARLT
    from gpaco.data.splits import SplitDataset
    from gpaco.data.transforms import build_eval_transform

    transform = build_eval_transform(pixels["image_size"], resize_size=pixels["resize_size"], mean=(0.0,) * 3,
                                     std=(1.0,) * 3, interpolation=pixels["interpolation"])
    if args.dry_run and not data_available(dataset=args.dataset, data_root=args.data_root, list_path=args.test_list):
        print_main("dry run: the data is absent; synthetic images")
        return SyntheticDataset(4, num_classes, pixels["image_size"], transform, seed=1)
    if is_cifar(args.dataset):
        classes = 100 if args.dataset == "cifar100" else 10
        if classes != num_classes:
            raise FlagError(f"the model predicts {num_classes} classes, --dataset {args.dataset} has {classes}")
        if not os.path.isdir(args.data_root):
            raise FlagError(f"--data-root {args.data_root}: no such folder (expected the CIFAR python pickles)")
        return CIFARLT(args.data_root, num_classes=classes, imb_factor=1.0, train=False, transform=transform)
    if not args.test_list:
        raise FlagError("--test-list is required with --dataset split (the images to attack)")
    if not os.path.isfile(args.test_list):
        raise FlagError(f"--test-list {args.test_list}: no such file (expected '<relative/path> <label>' lines)")
    return SplitDataset(args.test_list, args.data_root, transform, num_classes=num_classes)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    _validate(args)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else
                                                                          "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlagError(f"--device {args.device}: CUDA is not available on this machine")
    net, forward, train_args, info = _load_model(args)
    num_classes = int(net.fc.out_features)
    if "autoattack" in args.attacks and args.autoattack_version != "rand" and num_classes < 10 and not args.dry_run:
        raise FlagError(f"--attacks autoattack: AutoAttack's targeted stages use 9 target classes, so the model needs "
                        f">= 10 classes (this one has {num_classes})")
    if args.dataset is None:  # a --test-list says split; else the CIFAR set the model was trained on
        trained_on = train_args.get("dataset")
        args.dataset = trained_on if trained_on in ("cifar10", "cifar100") and not args.test_list else "split"
    pixels = _pixel_settings(args, train_args)
    dataset = _pixel_dataset(args, pixels, num_classes)
    if pixels["norm"] == "none":
        model = PixelSpaceModel(net, forward=forward)
    else:
        from gpaco.data.transforms import NORMALIZATION

        mean, std = NORMALIZATION[pixels["norm"]]
        model = PixelSpaceModel(net, mean=mean, std=std, forward=forward)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    num_images = min(args.max_images, len(dataset))
    identity = {"model": {"weights_sha256": weights_sha256(model)},
                "data": {"dataset": args.dataset, "samples": len(dataset), "classes": num_classes,
                         "labels_sha256": labels_sha256(dataset, num_images)},
                "pixels": pixels}
    source = args.weights or info["checkpoint"]
    out = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(source)), "adversarial")
    settings = AttackSettings(attacks=tuple(args.attacks), epsilon=args.epsilon / 255, step_size=args.step_size / 255,
                              seed=args.seed, autoattack_version=args.autoattack_version)
    print_main(f"{source}: {num_classes} classes; the attacks see pixels in [0, 1] (--norm {pixels['norm']} inside "
               f"the model, {pixels['image_size']} px); {device}; {'dry run' if args.dry_run else f'writing to {out}'}")
    if args.dry_run:
        return _dry_run(model.to(device), dataset, settings, device)
    return evaluate_robustness(model.to(device), dataset, output_dir=out, settings=settings,
                               batch_size=args.batch_size, max_images=args.max_images, identity=identity,
                               info=info, device=device, workers=args.workers, overwrite=args.overwrite,
                               stop_after_batches=args.stop_after_batches)


def _dry_run(model: nn.Module, dataset: Dataset, settings: AttackSettings, device: torch.device) -> Dict[str, Any]:
    """Every row on 2 images with a token budget, into a temporary folder: the configuration
    (model, data, pixel pipeline, pyautoattack and its API) works; the numbers mean nothing.
    The labels are the model's own predictions, so that every attack stage has images to attack."""
    import dataclasses
    import tempfile

    from torch.utils.data import TensorDataset

    n = min(2, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)])
    with torch.no_grad():
        labels = model(images.to(device)).argmax(1).cpu()
    smoke = dataclasses.replace(settings, steps=min(settings.steps, 1),
                                autoattack_budget=1 if "autoattack" in settings.attacks else None)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpaco_adv_dry_run_") as tmp:
        result = evaluate_robustness(model, TensorDataset(images, labels), output_dir=tmp, settings=smoke,
                                     batch_size=n, max_images=n, device=device,
                                     log=lambda line: None if line.startswith("wrote ") else print_main(line))
    print_main(f"dry run ok: {', '.join(settings.attacks)} ran on {n} images in {time.perf_counter() - t0:.1f} s "
               f"(one PGD step, one iteration per AutoAttack stage); nothing written")
    return {**result, "dry_run": True, "output_dir": None, "state": None}


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/eval_adversarial.py (one ``error: ...`` line and exit 2 for bad flags, files or state)."""
    run_cli(main, argv)
