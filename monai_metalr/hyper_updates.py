"""How a meta step turns the hypergradient into new learning-rate multipliers.

MetaLR learns one multiplier ``m_j`` per layer group on top of the LR ``s_j(t)`` that the optimizer's param
group holds (a constant, or whatever an LR scheduler sets), so group j steps with ``alpha_j = s_j * m_j``.
Each rule maps ``(m, s, h)`` to the new ``m``, with ``h_j = dL_val/dalpha_j``:

- ``log_adam`` (default): an Adam step on ``log m_j`` driven by the group's hypergradient: its momentum over the
  root mean square of the group's own hypergradient history, clipped to [-1, 1]. Multiplying a group's
  hypergradients by any constant (loss scale, gradient scale, parameter count) leaves its trajectory
  unchanged, ``hyper_lr`` bounds the relative LR change per meta step (reached while a group's hypergradient
  keeps one sign), and a hypergradient that flips sign at random averages out in the momentum instead of
  compounding.
- ``multiplicative``: ``alpha (1 - eta h)``, the MetaLR authors' code.
- ``additive``: ``alpha - eta h``, the MetaLR paper's text.
- ``cosine``: ``alpha (1 - eta h / (|v_j| |u_j|))``, the normalised multiplicative rule of hypergradient
  descent (Baydin et al., ICLR 2018): scale-free, but the cosine of two noisy high-dimensional vectors shrinks
  like ``1/sqrt(n)``, so large groups barely move.
- ``sign``: ``alpha exp(-eta sign(h))``: scale-free, but noise moves an LR as far as a consistent signal does.

All state is per group, float64, on the LRs' device; updates are ``torch.where``-masked, so no host sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

#: the group norms ``(|v_j|, |u_j|)`` a rule with ``needs_norms`` gets; ``None`` for the others
Norms = tuple[Tensor, Tensor] | None

__all__ = [
    "HYPER_UPDATES",
    "Additive",
    "Cosine",
    "HyperUpdate",
    "LogAdam",
    "Multiplicative",
    "Sign",
    "make_hyper_update",
]


class HyperUpdate:
    """Base class of the LR-multiplier update rules.

    Args:
        hyper_lr: the rule's step size eta.
        num_groups: number of layer groups.
    """

    name: ClassVar[str] = ""
    #: whether :meth:`new_multipliers` needs the group norms ``|v_j|`` and ``|u_j|``
    needs_norms: ClassVar[bool] = False

    def __init__(self, hyper_lr: float, num_groups: int) -> None:
        self.hyper_lr = float(hyper_lr)
        self.num_groups = int(num_groups)

    def new_multipliers(self, m: Tensor, s: Tensor, h: Tensor, active: Tensor, norms: Norms = None) -> Tensor:
        """The updated multipliers (before clamping); groups where ``active`` is False keep ``m``. A rule with
        state (``log_adam``) advances it for the active groups.

        Args:
            m: current multipliers ``[G]`` (float64).
            s: the base LRs ``s_j(t)`` of this step ``[G]``.
            h: the hypergradient ``dL_val/dalpha_j`` ``[G]``.
            active: groups to update (not held fixed, finite step).
            norms: ``(|v_j|, |u_j|)`` when :attr:`needs_norms`.
        """
        raise NotImplementedError

    def to(self, device: torch.device) -> HyperUpdate:
        """Move the rule's state to ``device``."""
        return self

    def state_dict(self) -> dict[str, Any]:
        """The rule's state (empty for stateless rules)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class Multiplicative(HyperUpdate):
    """``alpha (1 - eta h)`` (the authors' code); as a multiplier: ``m (1 - eta h)``."""

    name = "multiplicative"

    def new_multipliers(self, m: Tensor, s: Tensor, h: Tensor, active: Tensor, norms: Norms = None) -> Tensor:
        return torch.where(active, m * (1.0 - self.hyper_lr * h), m)


class Additive(HyperUpdate):
    """``alpha - eta h`` (the paper's text); as a multiplier: ``m - eta h / s`` (unchanged while ``s = 0``)."""

    name = "additive"

    def new_multipliers(self, m: Tensor, s: Tensor, h: Tensor, active: Tensor, norms: Norms = None) -> Tensor:
        live = active & (s > 0)
        return torch.where(live, m - self.hyper_lr * h / torch.where(live, s, 1.0), m)


class Cosine(HyperUpdate):
    """Hypergradient descent's normalised multiplicative rule: ``m (1 - eta <-v, u>_j / (|v_j| |u_j|))``."""

    name = "cosine"
    needs_norms = True

    def new_multipliers(self, m: Tensor, s: Tensor, h: Tensor, active: Tensor, norms: Norms = None) -> Tensor:
        if norms is None:
            raise ValueError("the cosine rule needs the group norms |v_j| and |u_j|")
        denominator = norms[0] * norms[1]
        live = active & (denominator > 0)
        cosine = h / torch.where(live, denominator, 1.0)
        return torch.where(live, m * (1.0 - self.hyper_lr * cosine), m)


class Sign(HyperUpdate):
    """``m exp(-eta sign(h))``: every active step moves log m by exactly eta."""

    name = "sign"

    def new_multipliers(self, m: Tensor, s: Tensor, h: Tensor, active: Tensor, norms: Norms = None) -> Tensor:
        return torch.where(active, m * torch.exp(-self.hyper_lr * torch.sign(h)), m)


class LogAdam(HyperUpdate):
    """Adam on ``log m_j``, one scalar Adam per group (Kingma & Ba 2015, without epsilon), step clipped to eta.

    ``dL_val/dlog m_j = alpha_j h_j`` has the sign of ``h_j``; Adam is fed ``h_j`` itself, so a schedule that
    rescales ``alpha`` over time (a warm-up, a decay) does not rescale the steps. With bias-corrected moments
    ``mhat_j`` and ``vhat_j`` of the group's own ``h_j`` history,
    ``log m_j <- log m_j - eta * clip(mhat_j / sqrt(vhat_j), -1, 1)``. The ratio is invariant to any positive
    rescaling of ``h_j``, exactly, since there is no epsilon; a group with ``h_j = 0`` (frozen, or unused by the
    meta forward) is not stepped and its moments are not diluted. Unclipped, the ratio is near 1 when the
    recent hypergradients agree in sign and size, and can exceed 1 (up to ``(1 - b1) / sqrt(1 - b2)``) after a
    sudden rise of ``|h|``; the clip makes ``eta`` a hard bound on the change of ``log m_j`` per meta step.

    Args:
        hyper_lr: eta, the largest change of ``log m_j`` per meta step.
        num_groups: number of layer groups.
        betas: decay rates of the first and second moments.
    """

    name = "log_adam"

    def __init__(self, hyper_lr: float, num_groups: int, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        super().__init__(hyper_lr, num_groups)
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
        self.betas = (b1, b2)
        self.exp_avg = torch.zeros(self.num_groups, dtype=torch.float64)
        self.exp_avg_sq = torch.zeros(self.num_groups, dtype=torch.float64)
        self.count = torch.zeros(self.num_groups, dtype=torch.float64)

    def new_multipliers(self, m: Tensor, s: Tensor, h: Tensor, active: Tensor, norms: Norms = None) -> Tensor:
        b1, b2 = self.betas
        live = active & (h != 0)
        self.exp_avg = torch.where(live, b1 * self.exp_avg + (1.0 - b1) * h, self.exp_avg)
        self.exp_avg_sq = torch.where(live, b2 * self.exp_avg_sq + (1.0 - b2) * h * h, self.exp_avg_sq)
        self.count = self.count + live.to(self.count.dtype)
        n = self.count.clamp(min=1.0)
        mhat = self.exp_avg / (1.0 - b1**n)
        vhat = self.exp_avg_sq / (1.0 - b2**n)
        ratio = (mhat / torch.where(vhat > 0, vhat, 1.0).sqrt()).clamp(-1.0, 1.0)
        step = torch.where(live & (vhat > 0), ratio, torch.zeros_like(ratio))
        return m * torch.exp(-self.hyper_lr * step)

    def to(self, device: torch.device) -> LogAdam:
        self.exp_avg, self.exp_avg_sq, self.count = (t.to(device) for t in (self.exp_avg, self.exp_avg_sq, self.count))
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "exp_avg": self.exp_avg.detach().cpu().clone(),
            "exp_avg_sq": self.exp_avg_sq.detach().cpu().clone(),
            "count": self.count.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = self.exp_avg.device
        for key in ("exp_avg", "exp_avg_sq", "count"):
            value = torch.as_tensor(state[key], dtype=torch.float64)
            if value.shape != (self.num_groups,):
                raise ValueError(
                    f"log_adam state {key!r} has shape {tuple(value.shape)}, expected ({self.num_groups},)"
                )
            setattr(self, key, value.to(device).clone())


HYPER_UPDATES: dict[str, type[HyperUpdate]] = {
    cls.name: cls for cls in (LogAdam, Multiplicative, Additive, Cosine, Sign)
}


def make_hyper_update(name: str, hyper_lr: float, num_groups: int) -> HyperUpdate:
    """The rule called ``name`` (one of :data:`HYPER_UPDATES`).

    Raises:
        ValueError: an unknown name.
    """
    if name not in HYPER_UPDATES:
        raise ValueError(f"unknown update {name!r}; use one of {sorted(HYPER_UPDATES)}")
    return HYPER_UPDATES[name](hyper_lr, num_groups)
