"""The loss family: one PaCo/GPaCo implementation shared by every recipe."""
from .ce import balanced_cross_entropy, cross_entropy
from .paco import log_prior_from_counts, paco_loss, paco_rows
from .pixel import pixel_paco_loss
from .supcon import multitask_loss, supcon_rows

__all__ = [
    "paco_loss", "paco_rows", "multitask_loss", "supcon_rows", "pixel_paco_loss",
    "cross_entropy", "balanced_cross_entropy", "log_prior_from_counts",
]
from .kd import ClassStats, gkl_at_loss, gkl_loss, ikl_at_loss, ikl_loss, kl_kd_loss  # noqa: E402

__all__ += ["ikl_loss", "gkl_loss", "kl_kd_loss", "ikl_at_loss", "gkl_at_loss", "ClassStats"]
