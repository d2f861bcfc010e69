"""The real optimizer's update direction u, so that its next step is ``theta <- theta - lr * u``.

The look-ahead ``theta_hat = theta - alpha * u`` and the hypergradient ``h = -<v, u>`` both need u. It is
computed from the gradients and the optimizer state without changing either, with multi-tensor
(``torch._foreach_*``) operations over buckets of parameters that share hyperparameters, writing
only into caller-provided buffers (views of one flat tensor), so no parameter-sized temporary is made.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["Direction", "make_direction"]

#: optimizers whose direction ``lookahead="optimizer"`` computes exactly (others fall back to the raw gradient)
EXACT_OPTIMIZERS = ("SGD", "Adam", "AdamW", "monai.optimizers.Novograd")

Scalars = Union[list[float], list[Tensor]]


def _scalar(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def _moment_settings(group: dict) -> tuple[float, float, float, float]:
    """``(beta1, beta2, eps, weight_decay)`` of an Adam-family param group, as plain numbers (a group key part)."""
    beta1, beta2 = (_scalar(b) for b in group["betas"])
    return beta1, beta2, _scalar(group["eps"]), _scalar(group["weight_decay"])


def _combine_(out: list[Tensor], terms: Sequence[tuple[float, list[Tensor]]]) -> None:
    """``out <- sum_k c_k * T_k`` in place; terms with a zero coefficient are skipped."""
    terms = [(c, t) for c, t in terms if c != 0.0]
    if not terms:
        torch._foreach_zero_(out)
        return
    c0, t0 = terms[0]
    torch._foreach_copy_(out, t0)
    if c0 != 1.0:
        torch._foreach_mul_(out, c0)
    for c, t in terms[1:]:
        torch._foreach_add_(out, t, alpha=c)


class Direction:
    """Base class: computes u for the parameters ``params`` (one flat order, all layer groups)."""

    #: whether :meth:`write_` needs a parameter-sized scratch list (Adam's denominator does)
    needs_scratch = False
    #: the ``lookahead`` this rule implements (``"sgd"`` also when ``"optimizer"`` fell back to it)
    lookahead = "optimizer"

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        group_of = {id(p): j for j, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self.group_index = [group_of[id(p)] for p in self.params]

    def _buckets(self) -> dict[tuple, list[int]]:
        """Indices of parameters with a gradient, keyed by what their formula depends on."""
        group_keys = [self._group_key(group) for group in self.optimizer.param_groups]
        state = self.optimizer.state
        buckets: dict[tuple, list[int]] = {}
        for i, (p, j) in enumerate(zip(self.params, self.group_index)):
            if p.grad is not None:
                buckets.setdefault((*group_keys[j], self._state_key(state.get(p))), []).append(i)
        return buckets

    def _group_key(self, group: dict) -> tuple:
        """The param group's hyperparameters that the formula depends on."""
        return ()

    def _state_key(self, state: dict | None) -> bool:
        """Whether the parameter's optimizer state exists yet (the first step has its own formula)."""
        return False

    def write_(self, out: list[Tensor], scratch: list[Tensor] | None = None) -> None:
        """``out <- u``; ``scratch`` (required when :attr:`needs_scratch`) may be overwritten.
        Parameters without a gradient get ``u = 0``."""
        if self.needs_scratch and scratch is None:
            raise ValueError(f"{type(self).__name__}.write_ needs a scratch list")
        self._zero_gradless(out)
        for key, idx in self._buckets().items():
            self._write_bucket(key, idx, [out[i] for i in idx], [scratch[i] for i in idx] if scratch else [])

    def product_(self, v: list[Tensor], scratch: list[Tensor]) -> None:
        """``scratch <- v * u`` element-wise; ``v`` may be overwritten."""
        self._zero_gradless(scratch)
        for key, idx in self._buckets().items():
            self._product_bucket(key, idx, [v[i] for i in idx], [scratch[i] for i in idx])

    def _zero_gradless(self, out: list[Tensor]) -> None:
        gradless = [out[i] for i, p in enumerate(self.params) if p.grad is None]
        if gradless:
            torch._foreach_zero_(gradless)

    def _write_bucket(self, key: tuple, idx: list[int], out: list[Tensor], scratch: list[Tensor]) -> None:
        raise NotImplementedError

    def _product_bucket(self, key: tuple, idx: list[int], v: list[Tensor], scratch: list[Tensor]) -> None:
        raise NotImplementedError

    def _grads(self, idx: list[int]) -> list[Tensor]:
        return [self.params[i].grad for i in idx]  # type: ignore[misc]

    def _params(self, idx: list[int]) -> list[Tensor]:
        return [self.params[i] for i in idx]


class GradientDirection(Direction):
    """``lookahead="sgd"``: u is the raw gradient."""

    lookahead = "sgd"

    def _write_bucket(self, key, idx, out, scratch):
        torch._foreach_copy_(out, self._grads(idx))

    def _product_bucket(self, key, idx, v, scratch):
        torch._foreach_copy_(scratch, self._grads(idx))
        torch._foreach_mul_(scratch, v)


class SGDDirection(Direction):
    """``torch.optim.SGD``: weight decay, momentum (with dampening), Nesterov, maximize.

    With g' = +-g + wd*theta and buffer b, the step direction is a linear combination
    ``u = c_g*g + c_p*theta + c_b*b``, so it is formed in place without any temporary.
    """

    def _group_key(self, group):
        return (
            _scalar(group["weight_decay"]),
            _scalar(group["momentum"]),
            _scalar(group["dampening"]),
            bool(group["nesterov"]),
            bool(group.get("maximize", False)),
        )

    def _state_key(self, state):
        return state is not None and state.get("momentum_buffer") is not None

    def _terms(self, key, idx) -> list[tuple[float, list[Tensor]]]:
        wd, mu, damp, nesterov, maximize, has_buf = key
        sign = -1.0 if maximize else 1.0
        if mu == 0.0:
            c, c_b = 1.0, 0.0
        elif not has_buf:  # torch's first momentum step copies g' into the buffer, without dampening
            c, c_b = (1.0 + mu) if nesterov else 1.0, 0.0
        elif nesterov:  # u = g' + mu * (mu * b + (1 - damp) * g')
            c, c_b = 1.0 + mu * (1.0 - damp), mu * mu
        else:  # u = mu * b + (1 - damp) * g'
            c, c_b = 1.0 - damp, mu
        terms = [(c * sign, self._grads(idx)), (c * wd, self._params(idx))]
        if c_b:
            terms.append((c_b, [self.optimizer.state[self.params[i]]["momentum_buffer"] for i in idx]))
        return terms

    def _write_bucket(self, key, idx, out, scratch):
        _combine_(out, self._terms(key, idx))

    def _product_bucket(self, key, idx, v, scratch):
        _combine_(scratch, self._terms(key, idx))
        torch._foreach_mul_(scratch, v)


class AdamDirection(Direction):
    """``torch.optim.Adam`` / ``AdamW``: u = m_new / (bc1 * D) (+ wd * theta if decoupled).

    ``m_new = b1*m + (1-b1)*g'`` and ``D = sqrt(v_new)/sqrt(bc2) + eps`` with ``v_new = b2*v + (1-b2)*g'^2``
    (``max`` with the running maximum under amsgrad), ``bc_k = 1 - b_k**t`` for the coming step t.
    """

    needs_scratch = True

    def __init__(self, optimizer, params, decoupled: bool | None = None):
        super().__init__(optimizer, params)
        self.decoupled = decoupled

    def _group_key(self, group):
        decoupled = self.decoupled if self.decoupled is not None else bool(group.get("decoupled_weight_decay", False))
        return _moment_settings(group) + (
            decoupled,
            bool(group.get("amsgrad", False)),
            bool(group.get("maximize", False)),
        )

    def _state_key(self, state):
        return state is not None and "step" in state

    def _bias_corrections(self, key, idx) -> tuple[Scalars, Scalars]:
        beta1, beta2, *_, has_state = key
        if not has_state:
            return [1.0 - beta1] * len(idx), [(1.0 - beta2) ** 0.5] * len(idx)
        steps = [self.optimizer.state[self.params[i]]["step"] for i in idx]
        if all(s.device.type == "cpu" for s in steps):  # the default: host-side counters, no device sync
            t = [float(s) + 1.0 for s in steps]
            return [1.0 - beta1**n for n in t], [(1.0 - beta2**n) ** 0.5 for n in t]
        # capturable/fused Adam keep the step on the device: stay there
        t = torch._foreach_add(steps, 1.0)
        bc1 = torch._foreach_neg(torch._foreach_pow(beta1, t))
        torch._foreach_add_(bc1, 1.0)
        bc2 = torch._foreach_neg(torch._foreach_pow(beta2, t))
        torch._foreach_add_(bc2, 1.0)
        torch._foreach_sqrt_(bc2)
        return bc1, bc2

    def _g_terms(self, key, idx) -> list[tuple[float, list[Tensor]]]:
        """g' = +-g (+ wd*theta for L2 weight decay)."""
        *_, wd, decoupled, _amsgrad, maximize, _has_state = key
        return [(-1.0 if maximize else 1.0, self._grads(idx)), (0.0 if decoupled else wd, self._params(idx))]

    def _denominator_(self, key, idx, out: list[Tensor], bc2_sqrt: Scalars) -> None:
        """``out <- D`` (without bc1)."""
        _beta1, beta2, eps, _wd, _decoupled, amsgrad, _maximize, has_state = key
        state = self.optimizer.state
        if has_state:
            torch._foreach_copy_(out, [state[self.params[i]]["exp_avg_sq"] for i in idx])
            torch._foreach_mul_(out, beta2)
        else:
            torch._foreach_zero_(out)
        # (1 - b2) * g'^2, with g'^2 expanded so that g' is never materialised
        (cg, g), (cp, p) = self._g_terms(key, idx)
        torch._foreach_addcmul_(out, g, g, value=(1.0 - beta2) * cg * cg)
        if cp:
            torch._foreach_addcmul_(out, g, p, value=2.0 * (1.0 - beta2) * cg * cp)
            torch._foreach_addcmul_(out, p, p, value=(1.0 - beta2) * cp * cp)
            # where g + wd*theta nearly cancels, the expanded square can round to a tiny negative number,
            # and its square root would be NaN; the true value is >= 0
            torch._foreach_clamp_min_(out, 0.0)
        if amsgrad and has_state:
            torch._foreach_maximum_(out, [state[self.params[i]]["max_exp_avg_sq"] for i in idx])
        torch._foreach_sqrt_(out)
        torch._foreach_div_(out, bc2_sqrt)
        torch._foreach_add_(out, eps)

    def _m_new_terms(self, key, idx) -> list[tuple[float, list[Tensor]]]:
        beta1, *_, has_state = key
        terms = [(c * (1.0 - beta1), t) for c, t in self._g_terms(key, idx)]
        if has_state:
            terms.append((beta1, [self.optimizer.state[self.params[i]]["exp_avg"] for i in idx]))
        return terms

    def _write_bucket(self, key, idx, out, scratch):
        wd, decoupled = key[3], key[4]
        bc1, bc2_sqrt = self._bias_corrections(key, idx)
        self._denominator_(key, idx, scratch, bc2_sqrt)
        _combine_(out, self._m_new_terms(key, idx))
        torch._foreach_div_(out, scratch)
        torch._foreach_div_(out, bc1)
        if decoupled and wd:  # AdamW: theta <- theta*(1 - lr*wd) - lr*adam  ==  theta - lr*(wd*theta + adam)
            torch._foreach_add_(out, self._params(idx), alpha=wd)

    def _product_bucket(self, key, idx, v, scratch):
        wd, decoupled = key[3], key[4]
        bc1, bc2_sqrt = self._bias_corrections(key, idx)
        # u = (m_new + wd*bc1*D*theta) / (bc1*D): divide v by the denominator first, then rebuild the numerator
        self._denominator_(key, idx, scratch, bc2_sqrt)
        torch._foreach_mul_(scratch, bc1)
        torch._foreach_div_(v, scratch)
        if decoupled and wd:
            torch._foreach_mul_(scratch, self._params(idx))
            torch._foreach_mul_(scratch, wd)
            for c, t in self._m_new_terms(key, idx):
                torch._foreach_add_(scratch, t, alpha=c)
        else:
            _combine_(scratch, self._m_new_terms(key, idx))
        torch._foreach_mul_(scratch, v)


class NovogradDirection(Direction):
    """``monai.optimizers.Novograd``: ``u = b1*m + c*(g/D + wd*theta)``, ``c = 1 - b1`` with ``grad_averaging``
    (else 1), and no bias correction.

    Novograd's second moment is one number per parameter tensor (its "layer"): ``D = sqrt(v_new) + eps`` with
    ``v_new = n`` where ``v == 0`` (its first step) and ``b2*v + (1-b2)*n`` elsewhere, ``n = |g|^2`` (``max`` with
    the running maximum under amsgrad). Weight decay is added after the division, so it is not normalised. The
    per-tensor numbers are stacked into one short vector, so the work stays a fixed number of kernels.
    """

    def _group_key(self, group):
        return _moment_settings(group) + (bool(group["grad_averaging"]), bool(group.get("amsgrad", False)))

    def _state_key(self, state):
        # Novograd keeps v in the dtype it was created with (the default dtype, even for a float64 network, until
        # a load_state_dict casts it): D must be rounded the same way to be the step's own denominator
        if not state:
            return (False, torch.get_default_dtype())
        return (True, state["exp_avg_sq"].dtype)

    def _denominators(self, key, idx) -> list[Tensor]:
        """``D`` for each parameter of the bucket: 0-d tensors, in the dtype of Novograd's ``exp_avg_sq``."""
        _beta1, beta2, eps, _wd, _averaging, amsgrad, (has_state, dtype) = key
        # |g|^2 from the multi-tensor norm: one kernel for the bucket, no parameter-sized temporary
        n = torch.stack(torch._foreach_norm(self._grads(idx))).square()
        if has_state:
            state = [self.optimizer.state[self.params[i]] for i in idx]
            v = torch.stack([s["exp_avg_sq"] for s in state])
            # the same ops in the same dtypes as Novograd's in-place update, so v_new is its value to the bit
            v_new = torch.where(v == 0, n.to(dtype), v.mul(beta2).add_(n, alpha=1.0 - beta2))
            if amsgrad:
                v_new = torch.maximum(v_new, torch.stack([s["max_exp_avg_sq"] for s in state]))
        else:  # first step: v starts at 0 and is set to n (and the running maximum of n is n)
            v_new = n.to(dtype)
        return list(v_new.sqrt().add_(eps).unbind())

    def _write_bucket(self, key, idx, out, scratch):
        beta1, _beta2, _eps, wd, averaging, _amsgrad, (has_state, _dtype) = key
        torch._foreach_copy_(out, self._grads(idx))
        torch._foreach_div_(out, self._denominators(key, idx))
        if wd:
            torch._foreach_add_(out, self._params(idx), alpha=wd)
        if averaging:
            torch._foreach_mul_(out, 1.0 - beta1)
        if has_state and beta1:
            torch._foreach_add_(out, [self.optimizer.state[self.params[i]]["exp_avg"] for i in idx], alpha=beta1)

    def _product_bucket(self, key, idx, v, scratch):
        self._write_bucket(key, idx, scratch, [])
        torch._foreach_mul_(scratch, v)


def _monai_novograd() -> type | None:
    """MONAI's Novograd class if MONAI has loaded it (an optimizer of that type implies it has), without importing
    MONAI here: this module stays pure torch."""
    return getattr(sys.modules.get("monai.optimizers.novograd"), "Novograd", None)


def make_direction(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], lookahead: str) -> Direction:
    """The direction rule for ``lookahead`` and this optimizer.

    Args:
        optimizer: the optimizer whose next step u describes.
        params: the parameters, in MetaLR's flat order.
        lookahead: ``"optimizer"``: the exact direction of SGD, Adam, AdamW or MONAI's Novograd; for any other
            optimizer a ``UserWarning`` and the raw gradient. ``"sgd"``: the raw gradient, silently.

    Raises:
        ValueError: an unknown ``lookahead``.
    """
    if lookahead == "sgd":
        return GradientDirection(optimizer, params)
    if lookahead != "optimizer":
        raise ValueError(f"unknown lookahead {lookahead!r}; use 'optimizer' or 'sgd'")
    if isinstance(optimizer, torch.optim.AdamW):
        return AdamDirection(optimizer, params, decoupled=True)
    if isinstance(optimizer, torch.optim.Adam):
        return AdamDirection(optimizer, params)
    if isinstance(optimizer, torch.optim.SGD):
        return SGDDirection(optimizer, params)
    novograd = _monai_novograd()
    if novograd is not None and isinstance(optimizer, novograd):
        return NovogradDirection(optimizer, params)
    name = type(optimizer).__name__
    # a usable approximation rather than an error: h is then exact for a plain SGD step, which still ranks the
    # groups' LRs; the user learns that it is not the step taken, and how to say that this is intended
    warnings.warn(
        f"MetaLR: lookahead='optimizer' has no exact direction for {name} (it has for "
        f"{', '.join(EXACT_OPTIMIZERS)}); looking ahead along the raw gradient instead, so h is the hypergradient "
        f"of a plain gradient step, not of {name}'s step. Pass lookahead='sgd' to choose this and silence this "
        "warning.",
        UserWarning,
        stacklevel=3,
    )
    return GradientDirection(optimizer, params)
