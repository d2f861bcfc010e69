"""MetaLR: learn one learning-rate multiplier per layer group online, by an exact first-order hypergradient.

Group j steps with ``alpha_j = s_j(t) * m_j``: ``s_j(t)`` is the LR its optimizer param group holds (a constant
or an LR scheduler's value, never overwritten) and ``m_j`` is what MetaLR learns (starting at 1). Per optimizer
step, after ``loss.backward()`` and before ``optimizer.step()``:

1. u = the real optimizer's update direction (from g and its state, nothing mutated);
2. look-ahead ``theta_hat = theta - alpha_j * u`` per layer group j;
3. one forward + backward of a held-out meta batch at ``theta_hat`` gives ``v = grad L_val(theta_hat)``;
4. ``h_j = dL_val/dalpha_j = -<v, u>_j`` (exact: theta_hat is linear in alpha, no second-order graph);
5. ``m_j`` is updated by the rule of :mod:`monai_metalr.hyper_updates` (default: a scale-free Adam step on
   ``log m_j``) and clamped to ``multiplier_bounds``;
6. the caller's ``optimizer.step()`` then uses ``s_j * m_j`` with the same gradient g: a step pre-hook puts
   the product into the param groups and a post-hook puts the scheduler's value back.

The model's parameters, ``.grad``, buffers, the optimizer state and the global RNG streams are never changed
by the meta step. One flat parameter-sized buffer is kept, the look-ahead weights; after the meta backward it
is reused to form ``v * u``. The meta gradient v is allocated by autograd as the backward runs, like any
gradient, and freed at the end of the step. Adam's direction needs a scratch buffer while u is formed; it is
freed before the meta forward, so it never coexists with the meta batch's activations.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .directions import make_direction
from .distributed import check_ranks_agree
from .flat import FlatLayout
from .groups import optimizer_group_names, unwrap_model
from .hyper_updates import HYPER_UPDATES, HyperUpdate, make_hyper_update
from .stream import MetaBatchStream
from .values import as_bool, as_names, as_number, as_pair

__all__ = [
    "DEFAULT_HYPER_LR",
    "DEFAULT_MULTIPLIER_BOUNDS",
    "LOOKAHEADS",
    "MetaLR",
    "check_options",
    "default_prepare_batch",
]

#: the default step size of the default ``log_adam`` rule: at most a 1% LR change per meta step
DEFAULT_HYPER_LR = 0.01
#: the default range of a learned multiplier m_j (the LR used is ``s_j(t) * m_j``)
DEFAULT_MULTIPLIER_BOUNDS = (0.01, 100.0)
#: Seconds MetaLR waits, under torch.distributed, for every rank to build the same MetaLR (data caching before the
#: trainer starts differs between ranks by much less than this).
DEFAULT_DIST_TIMEOUT = 300.0
#: the values of MetaLR's ``lookahead``
LOOKAHEADS = ("optimizer", "sgd")


def _choice(options: Sequence[str]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"unknown {name} {value!r}; use one of {sorted(options)}")
        return value

    return check


def _bounds(name: str, value: Any) -> tuple[float, float]:
    lo, hi = as_pair(name, value)
    if not 0.0 < lo < 1.0 < hi:
        raise ValueError(f"{name} must satisfy 0 < low < 1 < high (every multiplier starts at 1), got {(lo, hi)}")
    return lo, hi


#: MetaLR's options that can be checked without the model, and their checks
_OPTION_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "hyper_lr": lambda n, v: as_number(n, v, minimum=0.0),
    "update": _choice(tuple(HYPER_UPDATES)),
    "multiplier_bounds": _bounds,
    "interval": lambda n, v: as_number(n, v, int, minimum=1),
    "lookahead": _choice(LOOKAHEADS),
    "fixed_groups": as_names,
    "fixed_epochs": lambda n, v: as_number(n, v, int, minimum=0),
    "seed": lambda n, v: None if v is None else as_number(n, v, int),
    "preserve_rng": as_bool,
    "dist_timeout": lambda n, v: as_number(n, v, minimum=1.0),
}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """MetaLR's keyword options checked and converted, before any model exists (:class:`MetaLRHandler` calls it
    when it is built, so a bundle's config errors show before its datasets are cached).

    Numbers, pairs, booleans and name lists may be strings, as a command-line override gives them: ``"1e-4"``,
    ``"[0.01, 100]"`` or ``"0.01,100"``, ``"5"``, ``"False"``/``"no"``, ``"stem,head"``.

    Args:
        options: any of ``hyper_lr``, ``update``, ``multiplier_bounds``, ``interval``, ``lookahead``,
            ``fixed_groups``, ``fixed_epochs``, ``seed``, ``preserve_rng``, ``dist_timeout``.

    Returns:
        the same keys with checked values (``float``, ``int``, ``tuple``, ``bool``, ``list``).

    Raises:
        ValueError: naming the option and its value: an unknown option, a value that is not a number (or not a
            finite, integer or non-negative one where needed), ``multiplier_bounds`` not ``0 < low < 1 < high``, an
            unknown ``update``/``lookahead`` name, a boolean that is not true/false/yes/no/on/off/1/0.
    """
    unknown = sorted(set(options) - set(_OPTION_CHECKS))
    if unknown:
        raise ValueError(f"unknown MetaLR option(s) {unknown}; the options are {sorted(_OPTION_CHECKS)}")
    return {name: _OPTION_CHECKS[name](name, value) for name, value in options.items()}


def default_prepare_batch(batch: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` on ``device`` from a MONAI dict batch (``image``/``label``) or a ``(x, y)`` pair."""
    if isinstance(batch, Mapping):
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"meta batch dict needs 'image' and 'label' keys, got {sorted(batch)}")
        x, y = batch["image"], batch["label"]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise ValueError(f"cannot split a meta batch of type {type(batch).__name__}; pass prepare_batch=")
    return x.to(device), y.to(device)


class _History:
    """Meta-step records in one growing float64 tensor on the LRs' device: one row of ``3 + 3G`` numbers
    per meta step (step, meta loss, skipped, LRs, multipliers, h), no Python object per step and no host sync."""

    _COLUMNS = ("lr", "multiplier", "hypergrad")

    def __init__(self, num_groups: int) -> None:
        self.num_groups = num_groups
        self.length = 0
        self._rows: Tensor | None = None

    def __len__(self) -> int:
        return self.length

    @property
    def width(self) -> int:
        return 3 + len(self._COLUMNS) * self.num_groups

    def _block(self, k: int) -> slice:
        g = self.num_groups
        return slice(3 + k * g, 3 + (k + 1) * g)

    def append(self, step: int, meta_loss: Tensor, skipped: Tensor, lrs: Tensor, mult: Tensor, h: Tensor) -> None:
        n = self.length
        if self._rows is None or self._rows.device != lrs.device or n == self._rows.shape[0]:
            # first row, the model moved to another device, or full: doubling is amortised O(1) per step
            grown = torch.empty(max(64, 2 * n), self.width, dtype=torch.float64, device=lrs.device)
            if n:
                grown[:n] = self._rows[:n].to(lrs.device)
            self._rows = grown
        row = self._rows[n]
        row[0] = step  # exact in float64 up to 2**53
        row[1] = meta_loss.detach().to(torch.float64)
        row[2] = skipped.to(torch.float64)
        for k, values in enumerate((lrs, mult, h)):
            row[self._block(k)] = values.to(torch.float64)
        self.length += 1

    def as_dict(self) -> dict[str, Tensor]:
        n = self.length
        rows = self._rows[:n].cpu() if self._rows is not None else torch.zeros(0, self.width, dtype=torch.float64)
        out = {"step": rows[:, 0].long(), "meta_loss": rows[:, 1].clone(), "skipped": rows[:, 2].bool()}
        for k, key in enumerate(self._COLUMNS):
            out[key] = rows[:, self._block(k)].clone()
        return out

    def load(self, state: Mapping[str, Tensor], device: torch.device) -> None:
        n = len(state["step"])
        self._rows = torch.zeros(max(64, n), self.width, dtype=torch.float64, device=device)
        if n:
            self._rows[:n, 0] = state["step"].to(torch.float64)
            self._rows[:n, 1] = state["meta_loss"]
            self._rows[:n, 2] = state["skipped"].to(torch.float64)
            for k, key in enumerate(self._COLUMNS):
                self._rows[:n, self._block(k)] = state[key]
        self.length = n


class MetaLR:
    """Meta-learned per-layer learning rates for fine-tuning (Chen et al., MICCAI 2023), exact and first-order.

    One optimizer param group is one layer group (build it with :func:`monai_metalr.param_groups`). MetaLR
    learns a multiplier ``m_j`` per group; the optimizer steps with ``s_j(t) * m_j``, where ``s_j(t)`` is
    whatever the param group's ``"lr"`` holds (its initial LR, or an LR scheduler's value: schedules are
    never overwritten). Call :meth:`step` after ``loss.backward()`` and before ``optimizer.step()``::

        opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
        meta = MetaLR(net, opt, val_loader, loss_fn)
        for x, y in train_loader:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            meta.step()
            opt.step()

    Args:
        model: the network being trained (DDP / ``torch.compile`` wrappers are seen through).
        optimizer: any torch optimizer with one param group per layer group. ``lookahead="optimizer"`` follows
            the exact next step of ``SGD``, ``Adam``, ``AdamW`` and MONAI's ``Novograd``; for any other optimizer it
            warns once and uses the raw gradient (``lookahead="sgd"``, which says so without a warning).
        meta_loader: held-out batches (a split that neither training nor model selection uses); cycled,
            reproducibly shuffled.
        loss_function: ``loss_function(pred, target)``; its mean is the meta loss.
        hyper_lr: step size eta of the rule. For the default ``log_adam`` it is the largest relative change of
            an LR per meta step (reached only while a group's hypergradient keeps its sign), the same for every
            network, loss and optimizer; the paper's rules need an eta matched to the scale of h.
        update: the multiplier update rule, one of :data:`monai_metalr.hyper_updates.HYPER_UPDATES`:
            ``"log_adam"`` (default, scale-free and noise-averaging), ``"multiplicative"`` (the authors' code),
            ``"additive"`` (the paper's text), ``"cosine"`` (hypergradient descent's normalised rule), ``"sign"``.
        multiplier_bounds: ``(low, high)`` with ``low < 1 < high``; every multiplier is clamped to it after each
            update, so a group's LR stays within ``[low, high] * s_j(t)``. A group that sits at a bound for a
            whole epoch gets a warning (:meth:`groups_at_bound`).
        interval: run the meta step every ``interval`` optimizer steps (cost about ``1 + 1/interval`` passes);
            the learned multipliers apply to every step.
        lookahead: ``"optimizer"``: the real optimizer's direction (momentum, Nesterov, weight decay, Adam
            moments and bias correction, Novograd's per-tensor moments); ``"sgd"``: the raw gradient.
            :attr:`lookahead` holds the one in use.
        fixed_groups: names of groups whose multiplier is held for the first ``fixed_epochs`` epochs
            (``None`` with ``fixed_epochs > 0`` holds all groups: a warm-up).
        fixed_epochs: number of epochs (counted by :meth:`set_epoch`) during which ``fixed_groups`` are held.
        prepare_batch: ``prepare_batch(batch, device) -> (inputs, targets)`` or
            ``(inputs, targets, args, kwargs)``; default :func:`default_prepare_batch`.
        scaler: a ``torch.amp.GradScaler`` in use: :meth:`step` unscales the gradients (``unscale_``) itself
            and scales the meta loss; a step with inf/NaN gradients is a skipped meta step.
        autocast_kwargs: if given, the meta forward runs under ``torch.autocast(**autocast_kwargs)``.
        seed: base seed of the meta-batch shuffling (default ``torch.initial_seed()``).
        preserve_rng: run the meta forward on forked RNG states (CPU and the parameters' device), so dropout,
            stochastic depth and augmentation draws of training are the same as without MetaLR.
        dist_timeout: under ``torch.distributed``, seconds to wait, when MetaLR is built, for every other rank to
            build the same MetaLR (:func:`monai_metalr.distributed.check_ranks_agree`): a rank without it, or with
            other layer groups or settings, is an error then instead of a hang in the hypergradient's all-reduce.

    Numbers, pairs, booleans and group names may be given as strings (a command line gives them so); see
    :func:`check_options`.

    Raises:
        ValueError: an optimizer with one param group, a parameter in no group or in two, an unknown
            ``update``/``lookahead``, a non-numeric, non-finite or negative ``hyper_lr``, ``multiplier_bounds``
            that do not contain 1, a ``preserve_rng`` that is not a boolean, an unknown fixed group, or an empty
            meta loader.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta_loader: Iterable,
        loss_function: Callable[..., Tensor],
        hyper_lr: float = DEFAULT_HYPER_LR,
        update: str = "log_adam",
        multiplier_bounds: tuple[float, float] = DEFAULT_MULTIPLIER_BOUNDS,
        interval: int = 1,
        lookahead: str = "optimizer",
        fixed_groups: Sequence[str] | None = None,
        fixed_epochs: int = 0,
        prepare_batch: Callable | None = None,
        scaler: Any | None = None,
        autocast_kwargs: dict | None = None,
        seed: int | None = None,
        preserve_rng: bool = True,
        dist_timeout: float = DEFAULT_DIST_TIMEOUT,
    ) -> None:
        checked = check_options(
            {
                "hyper_lr": hyper_lr,
                "update": update,
                "multiplier_bounds": multiplier_bounds,
                "interval": interval,
                "lookahead": lookahead,
                "fixed_groups": fixed_groups,
                "fixed_epochs": fixed_epochs,
                "seed": seed,
                "preserve_rng": preserve_rng,
                "dist_timeout": dist_timeout,
            }
        )
        hyper_lr, update, (lo, hi) = checked["hyper_lr"], checked["update"], checked["multiplier_bounds"]
        interval, lookahead, fixed_groups = checked["interval"], checked["lookahead"], checked["fixed_groups"]
        self.model = model
        self.module = unwrap_model(model)
        self.optimizer = optimizer
        self.group_names = optimizer_group_names(model, optimizer)
        self.direction = make_direction(optimizer, [p for g in optimizer.param_groups for p in g["params"]], lookahead)
        self.loss_function = loss_function
        self.rule: HyperUpdate = make_hyper_update(update, hyper_lr, len(self.group_names))
        self.hyper_lr, self.update, self.multiplier_bounds = hyper_lr, update, (lo, hi)
        # the rule in use: "sgd" also where "optimizer" fell back to it for an optimizer without an exact rule
        self.interval, self.lookahead = interval, self.direction.lookahead
        self.prepare_batch = prepare_batch or default_prepare_batch
        self.scaler, self.autocast_kwargs = scaler, autocast_kwargs
        self.preserve_rng = checked["preserve_rng"]
        unknown = sorted(set(fixed_groups or ()) - set(self.group_names))
        if unknown:
            raise ValueError(f"fixed_groups {unknown} are not layer groups; groups are {self.group_names}")
        self.fixed_groups = list(self.group_names if fixed_groups is None else fixed_groups)
        self.fixed_epochs = checked["fixed_epochs"]
        self.stream = MetaBatchStream(meta_loader, checked["seed"])

        self.params: list[Tensor] = list(self.direction.params)
        names = {id(p): n for n, p in self.module.named_parameters()}
        self.param_names = [names[id(p)] for p in self.params]
        self._layout = FlatLayout([[p.numel() for p in g["params"]] for g in optimizer.param_groups])
        num_groups = len(self.group_names)
        self._mult = torch.ones(num_groups, dtype=torch.float64)
        self._mult_host: list[float] = [1.0] * num_groups  # for optimizers that take float LRs
        self._skipped = torch.zeros((), dtype=torch.long)
        self._fixed = torch.zeros(num_groups, dtype=torch.bool)
        self._at_bound = torch.ones(num_groups, dtype=torch.bool)  # at a bound at every meta step since reset
        self._steps_since_bound_check = 0
        self.epoch = 0
        self.num_calls = 0  # optimizer steps seen
        self.num_meta_steps = 0
        self._history = _History(num_groups)
        self._lookahead: Tensor | None = None  # flat theta_hat; v * u after the meta backward
        self._la_views: list[Tensor] = []
        self._leaves: dict[str, Tensor] = {}  # theta_hat views that autograd differentiates
        self._buffer_copies: dict[str, Tensor] = {}
        self._group_of_param: Tensor | None = None  # for the cosine rule's per-group |v|
        self._base_key: tuple | None = None
        self._base_dev: Tensor | None = None
        self._saved_lrs: list[Any] | None = None
        self._warned_sync = False
        owner = getattr(optimizer, "_metalr", None)
        if owner is not None and owner._hooks:
            # a second pair of hooks would save the first one's product as the schedule and compound it
            raise ValueError(
                "this optimizer already has a MetaLR attached; call remove_hooks() on that one first (or build "
                "a new optimizer)"
            )
        optimizer._metalr = self  # type: ignore[attr-defined]
        self._hooks = [
            optimizer.register_step_pre_hook(self._apply_multipliers),
            optimizer.register_step_post_hook(self._restore_schedule),
        ]
        self.set_epoch(0)
        check_ranks_agree(self._description(), checked["dist_timeout"])

    def _description(self) -> dict[str, Any]:
        """What every rank's MetaLR must share: its groups, their sizes and the settings of the update."""
        return {
            "groups": self.group_names,
            "group_sizes": [sum(p.numel() for p in g["params"]) for g in self.optimizer.param_groups],
            "update": self.update,
            "hyper_lr": self.hyper_lr,
            "multiplier_bounds": list(self.multiplier_bounds),
            "interval": self.interval,
            "lookahead": self.lookahead,
        }

    # ------------------------------------------------------------------ state
    @property
    def multipliers(self) -> Tensor:
        """The learned multipliers ``m_j`` (float64; on the parameters' device from the first meta step)."""
        return self._mult

    @property
    def lrs(self) -> Tensor:
        """The LRs the next optimizer step uses, ``s_j(t) * m_j`` (float64), with ``s_j(t)`` read from the
        optimizer's param groups now."""
        return self._base_lrs() * self._mult

    @property
    def num_skipped(self) -> int:
        """Meta steps skipped because the meta loss or hypergradient was not finite."""
        return int(self._skipped)

    @property
    def history(self) -> dict[str, Tensor]:
        """Per meta step: ``step`` (optimizer step, 1-based), ``lr`` [N, G] (the LRs used by that step's
        optimizer step), ``multiplier`` [N, G] (after the update), ``hypergrad`` [N, G], ``meta_loss`` [N],
        ``skipped`` [N] (CPU tensors)."""
        return self._history.as_dict()

    def set_epoch(self, epoch: int) -> None:
        """Tell MetaLR the (0-based) training epoch; it decides which groups are still held fixed.

        A group whose multiplier sat at a bound at every meta step since the previous epoch gets a warning
        (see :meth:`groups_at_bound`)."""
        self.groups_at_bound()
        self.epoch = int(epoch)
        held = self.epoch < self.fixed_epochs
        mask = [held and name in self.fixed_groups for name in self.group_names]
        self._fixed = torch.tensor(mask, dtype=torch.bool, device=self._mult.device)

    def groups_at_bound(self, warn: bool = True) -> list[str]:
        """Names of the groups whose multiplier was at a bound at every meta step since the last call (or
        since :meth:`set_epoch`); with ``warn``, a ``UserWarning`` names them. The record is then reset.

        A pinned group's LR is decided by the bound, not by the meta signal: widen ``multiplier_bounds`` or
        start that group at another LR. Reading the record is one host sync (call it once per epoch)."""
        if self._steps_since_bound_check == 0:
            return []
        pinned = [n for n, p in zip(self.group_names, self._at_bound.tolist()) if p]
        if pinned and warn:
            lo, hi = self.multiplier_bounds
            values = dict(zip(self.group_names, self._mult.tolist()))
            detail = ", ".join(f"{n} (multiplier {values[n]:.3g})" for n in pinned)
            warnings.warn(
                f"MetaLR: {detail} sat at a multiplier bound {(lo, hi)} for all {self._steps_since_bound_check} "
                f"meta steps of epoch {self.epoch}; their LRs are set by the bound, not learned. Widen "
                "multiplier_bounds, or change those groups' initial LRs.",
                stacklevel=2,
            )
        self._at_bound = torch.ones_like(self._at_bound)
        self._steps_since_bound_check = 0
        return pinned

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: multipliers, the rule's state, counters, meta-loader position
        and history. (The schedule's ``s_j(t)`` is the optimizer's and the scheduler's state.)"""
        return {
            "group_names": list(self.group_names),
            "update": self.update,
            "multipliers": self._mult.detach().cpu().clone(),
            "rule": self.rule.state_dict(),
            "epoch": self.epoch,
            "num_calls": self.num_calls,
            "num_meta_steps": self.num_meta_steps,
            "num_skipped": self.num_skipped,
            "stream": self.stream.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the state was saved for other layer groups, by another update rule, or by a version
                of MetaLR that learned absolute LRs instead of multipliers.
        """
        if list(state["group_names"]) != self.group_names:
            raise ValueError(
                f"MetaLR state is for groups {list(state['group_names'])}, this run has {self.group_names}"
            )
        if "multipliers" not in state:
            raise ValueError(
                "MetaLR state was saved by an older version that learned absolute LRs (no 'multipliers'); "
                "it cannot be continued: start a fresh run (new output_dir, or resume=False)"
            )
        if state.get("update", self.update) != self.update:
            raise ValueError(
                f"MetaLR state was saved with update={state['update']!r}, this run uses update={self.update!r}"
            )
        device = self._device()
        self._mult = state["multipliers"].to(device=device, dtype=torch.float64).clone()
        self._mult_host = self._mult.tolist()
        self.rule.to(device)
        self.rule.load_state_dict(state.get("rule", {}))
        self._skipped = torch.tensor(int(state["num_skipped"]), device=device)
        self.num_calls, self.num_meta_steps = int(state["num_calls"]), int(state["num_meta_steps"])
        self.stream.load_state_dict(state["stream"])
        self._history.load(state["history"], device)
        self._at_bound = torch.ones_like(self._at_bound, device=device)
        self._steps_since_bound_check = 0
        self.set_epoch(int(state["epoch"]))

    def remove_hooks(self) -> None:
        """Detach MetaLR from the optimizer: later steps use the param groups' own LRs."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if getattr(self.optimizer, "_metalr", None) is self:
            del self.optimizer._metalr  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ the meta step
    def step(self) -> Tensor | None:
        """Run the meta step for the gradients now in ``.grad`` and update the multipliers.

        Returns:
            the hypergradient ``h`` ([G], ``h_j = dL_val/dalpha_j``), or ``None`` when this call was skipped
            by ``interval`` or (for CPU tensors) because the meta loss or ``h`` was not finite. On CUDA the
            finiteness check stays on the device (no sync): the multipliers are left unchanged and the skip is
            counted in :attr:`num_skipped`, but ``h`` is returned.
        """
        self.num_calls += 1
        if (self.num_calls - 1) % self.interval:
            return None
        with torch.profiler.record_function("MetaLR.step"):
            self._allocate()
            if self.scaler is not None and getattr(self.scaler, "is_enabled", lambda: True)():
                try:
                    self.scaler.unscale_(self.optimizer)
                except RuntimeError as err:  # the caller unscaled already (e.g. to clip gradients): fine
                    if "unscale_() has already been called" not in str(err):
                        raise
            base = self._base_lrs()
            alpha = base * self._mult
            u_norm = self._look_ahead(alpha)
            rng = self._forked_rng() if self.preserve_rng else contextlib.nullcontext()
            with rng:
                meta_loss, grad_scale = self._meta_backward()
            h, v_norm = self._hypergradient()
            if grad_scale is not None:
                h = h / grad_scale
                v_norm = v_norm / grad_scale if v_norm is not None else None
            h, meta_loss, v_norm = self._all_reduce(h, meta_loss.detach().to(torch.float64), v_norm)
            finite = torch.isfinite(h).all() & torch.isfinite(meta_loss)
            norms = (v_norm, u_norm) if self.rule.needs_norms else None
            self._update_multipliers(base, h, finite, norms)
            self.num_meta_steps += 1
            self._history.append(self.num_calls, meta_loss, ~finite, base * self._mult, self._mult, h)
        if self._mult.device.type == "cpu" and not bool(finite):
            return None
        return h

    @torch.no_grad()
    def _look_ahead(self, alpha: Tensor) -> Tensor | None:
        """``lookahead <- theta - alpha_j * u`` for every group, in the flat buffer; returns ``|u_j|`` when the
        rule needs it."""
        scratch = None
        if self.direction.needs_scratch:  # transient: freed before the meta forward allocates activations
            scratch = self._layout.views(torch.empty_like(self._lookahead), self.params)
        self.direction.write_(self._la_views, scratch)  # lookahead <- u
        del scratch
        rows = self._layout.rows(self._lookahead)
        u_norm = self._group_norms(self._la_views) if self.rule.needs_norms else None
        rows.mul_(self._layout.per_row(-alpha.to(rows.dtype)).unsqueeze(1))  # one kernel for all groups
        torch._foreach_add_(self._la_views, self.params)
        return u_norm

    @torch.no_grad()
    def _hypergradient(self) -> tuple[Tensor, Tensor | None]:
        """``h_j = -sum_{p in j} <v_p, u_p>`` (float64) from the meta gradients in the leaves' ``.grad``, and
        ``|v_j|`` when the rule needs it.

        The look-ahead buffer is overwritten with ``v * u`` and the meta gradients are released.
        """
        v = []
        for leaf in self._leaves.values():
            # a parameter the meta forward did not use has no gradient: v = 0
            v.append(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
            leaf.grad = None
        v_norm = self._group_norms(v) if self.rule.needs_norms else None
        self.direction.product_(v, self._la_views)  # lookahead <- v * u (v is overwritten)
        return -self._layout.segment_sums(self._lookahead), v_norm

    def _group_norms(self, tensors: list[Tensor]) -> Tensor:
        """``|x_j|`` per group from per-tensor norms (no temporary of the parameters' size)."""
        squares = torch.stack(torch._foreach_norm(tensors)).to(torch.float64).square()
        total = torch.zeros(len(self.group_names), dtype=torch.float64, device=squares.device)
        return total.index_add_(0, self._group_of_param, squares).sqrt()

    def _update_multipliers(self, base: Tensor, h: Tensor, finite: Tensor, norms: Any) -> None:
        lo, hi = self.multiplier_bounds
        active = ~self._fixed & finite
        # a non-finite h must not reach the rule's state: zero it where inactive
        safe_h = torch.where(active, h, torch.zeros_like(h))
        new = self.rule.new_multipliers(self._mult, base, safe_h, active, norms).clamp(lo, hi)
        self._mult = torch.where(active, new, self._mult)
        self._skipped += (~finite).long()
        self._at_bound &= (self._mult <= lo) | (self._mult >= hi)
        self._steps_since_bound_check += 1
        if self._mult.device.type == "cpu" or not _takes_tensor_lr(self.optimizer):
            if self._mult.device.type != "cpu" and not self._warned_sync:
                hint = (
                    " without fused=True or capturable=True"
                    if isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD))
                    else ""
                )
                warnings.warn(
                    f"{type(self.optimizer).__name__}{hint} takes float LRs: MetaLR copies its multipliers to the "
                    "host once per meta step",
                    stacklevel=3,
                )
                self._warned_sync = True
            self._mult_host = self._mult.tolist()

    def _forked_rng(self) -> contextlib.AbstractContextManager:
        """Fork the CPU RNG and the parameters' device RNG (host-side generator state, no device sync)."""
        device = self._device()
        if device.type == "cpu":
            return torch.random.fork_rng(devices=[])
        return torch.random.fork_rng(devices=[device], device_type=device.type)

    def _meta_backward(self) -> tuple[Tensor, Tensor | None]:
        """Forward + backward of the next meta batch at theta_hat; v lands in the leaves' ``.grad``."""
        sources = dict(self.module.named_buffers())
        if {n: (b.shape, b.dtype, b.device) for n, b in sources.items()} != {
            n: (b.shape, b.dtype, b.device) for n, b in self._buffer_copies.items()
        }:
            self._buffer_copies = {n: b.clone() for n, b in sources.items()}
        elif sources:
            # the copies take the BatchNorm running-stat updates, so the model's buffers stay untouched
            with torch.no_grad():
                torch._foreach_copy_(list(self._buffer_copies.values()), list(sources.values()))
        batch = next(self.stream)
        prepared = self.prepare_batch(batch, self._device())
        inputs, targets = prepared[0], prepared[1]
        args, kwargs = (tuple(prepared[2]), dict(prepared[3])) if len(prepared) == 4 else ((), {})
        autocast = torch.autocast(**self.autocast_kwargs) if self.autocast_kwargs else contextlib.nullcontext()
        with torch.enable_grad(), autocast:
            try:
                pred = torch.func.functional_call(
                    self.module,
                    (self._leaves, self._buffer_copies),
                    (inputs, *args),
                    kwargs,
                    tie_weights=True,
                    strict=False,
                )
                loss = self.loss_function(pred, targets).mean()
            except (RuntimeError, ValueError, AssertionError) as e:  # torch, torch losses, MONAI losses
                if "size" not in str(e).lower() and "shape" not in str(e).lower():
                    raise
                # e.g. whole validation volumes, made for a SlidingWindowInferer, given as meta batches
                raise RuntimeError(
                    f"MetaLR's meta forward failed on a meta batch of inputs {tuple(inputs.shape)} and targets "
                    f"{tuple(getattr(targets, 'shape', ()))}: {e}. Meta batches must have the training input size "
                    "(the meta forward calls the network directly, as the trainer does; it does not use the "
                    "evaluator's inferer): give the meta loader random crops of held-out cases made by the "
                    "training preprocessing (monai_metalr.data.meta_loader), not a whole-volume validation loader"
                ) from e
        grad_scale = None
        to_backward = loss
        if self.scaler is not None and getattr(self.scaler, "is_enabled", lambda: True)():
            grad_scale = self.scaler.scale(torch.ones((), device=loss.device, dtype=torch.float32)).to(torch.float64)
            to_backward = self.scaler.scale(loss)
        torch.autograd.backward(to_backward, inputs=list(self._leaves.values()))
        # a tensor subclass (MONAI's MetaTensor from a MONAI pipeline) must not leak into the LR state
        return loss.detach().as_subclass(torch.Tensor), grad_scale

    @staticmethod
    def _all_reduce(h: Tensor, meta_loss: Tensor, v_norm: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Average h and the meta loss over ranks (and, for the cosine rule, the squared meta-gradient norms: u is
        the same on every rank), so every rank holds identical multipliers."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [h, meta_loss.reshape(1)] + ([v_norm.square()] if v_norm is not None else [])
            packed = torch.cat(parts)
            dist.all_reduce(packed)
            packed /= dist.get_world_size()
            g = h.numel()
            reduced_norm = packed[g + 1 :].sqrt() if v_norm is not None else None
            return packed[:g], packed[g], reduced_norm
        return h, meta_loss, v_norm

    # ------------------------------------------------------------------ the LRs the optimizer uses
    def _base_lrs(self) -> Tensor:
        """``s_j(t)``: the param groups' own LRs now (float64 on the multipliers' device). Python floats are
        uploaded only when they change, without a blocking copy."""
        values = [g["lr"] for g in self.optimizer.param_groups]
        if len(values) != len(self.group_names):
            raise ValueError(
                f"the optimizer has {len(values)} param groups, MetaLR was built for {len(self.group_names)}"
            )
        device = self._mult.device
        if any(isinstance(v, Tensor) for v in values):
            return torch.stack([torch.as_tensor(v).to(device=device, dtype=torch.float64) for v in values])
        key = tuple(float(v) for v in values)
        if key != self._base_key or self._base_dev is None or self._base_dev.device != device:
            self._base_dev = torch.tensor(key, dtype=torch.float64).to(device, non_blocking=True)
            self._base_key = key
        return self._base_dev

    def _apply_multipliers(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Step pre-hook: the param groups hold ``s_j * m_j`` for the duration of ``optimizer.step()``."""
        # a step that raised never ran the post-hook: put the schedule back before saving it again
        self._restore_schedule(optimizer, args, kwargs)
        groups = optimizer.param_groups
        if len(groups) != len(self.group_names):
            raise ValueError(
                f"the optimizer has {len(groups)} param groups, MetaLR was built for {len(self.group_names)} "
                f"({self.group_names}); build a new MetaLR after add_param_group"
            )
        saved = [g["lr"] for g in groups]
        if self._mult.device.type != "cpu" and _takes_tensor_lr(optimizer):
            used = (self._base_lrs() * self._mult).to(torch.float32)  # device tensors, no host sync
            for j, group in enumerate(groups):
                group["lr"] = used[j]
        else:
            for group, base, m in zip(groups, saved, self._mult_host):
                # m == 1 (hyper_lr 0, held groups): the schedule's own object, so a plain run is reproduced exactly
                group["lr"] = base * m if m != 1.0 else base
        self._saved_lrs = saved

    def _restore_schedule(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Step post-hook: put the schedule's own LRs back, so a scheduler never sees the multipliers."""
        if self._saved_lrs is not None:
            for group, base in zip(optimizer.param_groups, self._saved_lrs):
                group["lr"] = base
            self._saved_lrs = None

    # ------------------------------------------------------------------ plumbing
    def _device(self) -> torch.device:
        return self.params[0].device

    def _allocate(self) -> None:
        """Create the look-ahead buffer, its per-parameter views and the meta-forward leaves (once per device)."""
        p0 = self.params[0]
        if self._lookahead is not None and self._lookahead.device == p0.device and self._lookahead.dtype == p0.dtype:
            return
        odd = [n for n, p in zip(self.param_names, self.params) if (p.device, p.dtype) != (p0.device, p0.dtype)]
        if odd:
            raise ValueError(
                f"MetaLR needs all trained parameters on one device with one dtype; {odd[:4]} differ from "
                f"{p0.device}/{p0.dtype}"
            )
        # zeros: the padding between groups is never written through a view and must stay 0
        self._lookahead = torch.zeros(self._layout.size, device=p0.device, dtype=p0.dtype)
        self._la_views = self._layout.views(self._lookahead, self.params)
        # leaves share the buffer's memory: writing theta_hat into the buffer updates what the forward sees
        self._leaves = {n: view.detach().requires_grad_(True) for n, view in zip(self.param_names, self._la_views)}
        self._layout = self._layout.to(p0.device)
        self._group_of_param = torch.tensor(self.direction.group_index, dtype=torch.long, device=p0.device)
        self._mult = self._mult.to(p0.device)
        self.rule.to(p0.device)
        self._skipped = self._skipped.to(p0.device)
        self._fixed = self._fixed.to(p0.device)
        self._at_bound = self._at_bound.to(p0.device)


def _takes_tensor_lr(optimizer: torch.optim.Optimizer) -> bool:
    """Optimizers whose CUDA step reads a device-tensor LR without converting it to a Python float."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)):
        return all(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    return False
