"""MetaLR: learn one learning rate per layer group online, by an exact first-order hypergradient.

Per optimizer step, after ``loss.backward()`` and before ``optimizer.step()``:

1. u = the real optimizer's update direction (from g and its state, nothing mutated);
2. look-ahead ``theta_hat = theta - alpha_j * u`` per layer group j;
3. one forward + backward of a held-out meta batch at ``theta_hat`` gives ``v = grad L_val(theta_hat)``;
4. ``h_j = dL_val/dalpha_j = -<v, u>_j`` (exact: theta_hat is linear in alpha, no second-order graph);
5. ``alpha_j <- alpha_j * (1 - eta * h_j)`` (or ``alpha_j - eta * h_j``), clamped to ``lr_bounds``;
6. the caller's ``optimizer.step()`` then uses the new LRs with the same gradient g.

The model's parameters, ``.grad``, buffers and the optimizer state are never written. One flat
parameter-sized buffer is kept, the look-ahead weights; after the meta backward it is reused to form
``v * u``. The meta gradient v is allocated by autograd as the backward runs, like any gradient, and
freed at the end of the step. Adam's direction needs a scratch buffer while u is formed; it is freed
before the meta forward, so it never coexists with the meta batch's activations.
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
from .flat import FlatLayout
from .groups import optimizer_group_names, unwrap_model
from .stream import MetaBatchStream

__all__ = ["MetaLR", "default_prepare_batch"]

_UPDATES = ("multiplicative", "additive")


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
    """Meta-step records in one growing float64 tensor on the LRs' device: one row of ``3 + 2G`` numbers
    per meta step (step, meta loss, skipped, LRs, h), no Python object per step and no host sync."""

    def __init__(self, num_groups: int) -> None:
        self.num_groups = num_groups
        self.length = 0
        self._rows: Tensor | None = None

    def __len__(self) -> int:
        return self.length

    def append(self, step: int, meta_loss: Tensor, skipped: Tensor, lrs: Tensor, h: Tensor) -> None:
        n, g = self.length, self.num_groups
        if self._rows is None or self._rows.device != lrs.device:
            self._rows = torch.empty(64, 3 + 2 * g, dtype=torch.float64, device=lrs.device)
        elif n == self._rows.shape[0]:  # doubling: amortised O(1) per step
            grown = torch.empty(2 * n, self._rows.shape[1], dtype=torch.float64, device=lrs.device)
            grown[:n] = self._rows
            self._rows = grown
        row = self._rows[n]
        row[0] = step  # exact in float64 up to 2**53
        row[1] = meta_loss.detach().to(torch.float64)
        row[2] = skipped.to(torch.float64)
        row[3 : 3 + g] = lrs
        row[3 + g :] = h.to(torch.float64)
        self.length += 1

    def as_dict(self) -> dict[str, Tensor]:
        n, g = self.length, self.num_groups
        rows = self._rows[:n].cpu() if self._rows is not None else torch.zeros(0, 3 + 2 * g, dtype=torch.float64)
        return {
            "step": rows[:, 0].long(),
            "lr": rows[:, 3 : 3 + g].clone(),
            "hypergrad": rows[:, 3 + g :].clone(),
            "meta_loss": rows[:, 1].clone(),
            "skipped": rows[:, 2].bool(),
        }

    def load(self, state: Mapping[str, Tensor], device: torch.device) -> None:
        n, g = len(state["step"]), self.num_groups
        self._rows = torch.zeros(max(64, n), 3 + 2 * g, dtype=torch.float64, device=device)
        if n:
            self._rows[:n, 0] = state["step"].to(torch.float64)
            self._rows[:n, 1] = state["meta_loss"]
            self._rows[:n, 2] = state["skipped"].to(torch.float64)
            self._rows[:n, 3 : 3 + g] = state["lr"]
            self._rows[:n, 3 + g :] = state["hypergrad"]
        self.length = n


class MetaLR:
    """Meta-learned per-layer learning rates for fine-tuning (Chen et al., MICCAI 2023), exact and first-order.

    One optimizer param group is one layer group (build it with :func:`monai_metalr.param_groups`).
    Call :meth:`step` after ``loss.backward()`` and before ``optimizer.step()``::

        opt = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2))
        meta = MetaLR(net, opt, val_loader, loss_fn)
        for x, y in train_loader:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            meta.step()
            opt.step()

    Args:
        model: the network being trained (DDP / ``torch.compile`` wrappers are seen through).
        optimizer: ``SGD``, ``Adam`` or ``AdamW`` for ``lookahead="optimizer"``; any optimizer for ``"sgd"``.
        meta_loader: held-out batches (a validation split, not training data); cycled, reproducibly shuffled.
        loss_function: ``loss_function(pred, target)``; its mean is the meta loss.
        hyper_lr: step size eta of the LR update.
        update: ``"multiplicative"`` (``alpha*(1 - eta*h)``, the authors' code) or ``"additive"`` (the paper text).
        lr_bounds: ``(lr_min, lr_max)``; every LR is clamped to it after each update.
        interval: run the meta step every ``interval`` optimizer steps (cost about ``1 + 1/interval`` passes).
        lookahead: ``"optimizer"``: the real optimizer's direction (momentum, Nesterov, weight decay, Adam
            moments and bias correction); ``"sgd"``: the raw gradient.
        fixed_groups: names of groups whose LR is held for the first ``fixed_epochs`` epochs
            (``None`` with ``fixed_epochs > 0`` holds all groups: a warm-up).
        fixed_epochs: number of epochs (counted by :meth:`set_epoch`) during which ``fixed_groups`` are held.
        prepare_batch: ``prepare_batch(batch, device) -> (inputs, targets)`` or
            ``(inputs, targets, args, kwargs)``; default :func:`default_prepare_batch`.
        scaler: a ``torch.amp.GradScaler`` in use: :meth:`step` unscales the gradients (``unscale_``) itself
            and scales the meta loss; a step with inf/NaN gradients is a skipped meta step.
        autocast_kwargs: if given, the meta forward runs under ``torch.autocast(**autocast_kwargs)``.
        seed: base seed of the meta-batch shuffling (default ``torch.initial_seed()``).

    Raises:
        ValueError: an optimizer with one param group, a parameter in no group or in two, an unknown
            ``update``/``lookahead``, inverted or non-positive ``lr_bounds``, an initial LR outside the
            bounds, an unknown fixed group, or an empty meta loader.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta_loader: Iterable,
        loss_function: Callable[..., Tensor],
        hyper_lr: float = 0.1,
        update: str = "multiplicative",
        lr_bounds: tuple[float, float] = (1e-6, 1e-2),
        interval: int = 1,
        lookahead: str = "optimizer",
        fixed_groups: Sequence[str] | None = None,
        fixed_epochs: int = 0,
        prepare_batch: Callable | None = None,
        scaler: Any | None = None,
        autocast_kwargs: dict | None = None,
        seed: int | None = None,
    ) -> None:
        if update not in _UPDATES:
            raise ValueError(f"unknown update {update!r}; use 'multiplicative' or 'additive'")
        lo, hi = (float(b) for b in lr_bounds)
        if not 0.0 < lo < hi:
            raise ValueError(f"lr_bounds must satisfy 0 < lr_min < lr_max, got {tuple(lr_bounds)}")
        if int(interval) < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        if hyper_lr < 0:
            raise ValueError(f"hyper_lr must be >= 0, got {hyper_lr}")
        self.model = model
        self.module = unwrap_model(model)
        self.optimizer = optimizer
        self.group_names = optimizer_group_names(model, optimizer)
        self.direction = make_direction(optimizer, [p for g in optimizer.param_groups for p in g["params"]], lookahead)
        self.loss_function = loss_function
        self.hyper_lr, self.update, self.lr_bounds = float(hyper_lr), update, (lo, hi)
        self.interval, self.lookahead = int(interval), lookahead
        self.prepare_batch = prepare_batch or default_prepare_batch
        self.scaler, self.autocast_kwargs = scaler, autocast_kwargs
        unknown = sorted(set(fixed_groups or ()) - set(self.group_names))
        if unknown:
            raise ValueError(f"fixed_groups {unknown} are not layer groups; groups are {self.group_names}")
        self.fixed_groups = list(self.group_names if fixed_groups is None else fixed_groups)
        self.fixed_epochs = int(fixed_epochs)
        self.stream = MetaBatchStream(meta_loader, seed)

        self.params: list[Tensor] = list(self.direction.params)
        names = {id(p): n for n, p in self.module.named_parameters()}
        self.param_names = [names[id(p)] for p in self.params]
        self._layout = FlatLayout([[p.numel() for p in g["params"]] for g in optimizer.param_groups])
        initial = [float(g["lr"]) for g in optimizer.param_groups]
        outside = [(n, lr) for n, lr in zip(self.group_names, initial) if not lo <= lr <= hi]
        if outside:
            raise ValueError(f"initial LRs {outside} are outside lr_bounds {(lo, hi)}; widen lr_bounds or lower the LR")
        self._lrs = torch.tensor(initial, dtype=torch.float64)
        self._skipped = torch.zeros((), dtype=torch.long)
        self._fixed = torch.zeros(len(self.group_names), dtype=torch.bool)
        self.epoch = 0
        self.num_calls = 0  # optimizer steps seen
        self.num_meta_steps = 0
        self._history = _History(len(self.group_names))
        self._lookahead: Tensor | None = None  # flat theta_hat; v * u after the meta backward
        self._la_views: list[Tensor] = []
        self._leaves: dict[str, Tensor] = {}  # theta_hat views that autograd differentiates
        self._buffer_copies: dict[str, Tensor] = {}
        self._opt_lrs: Tensor | None = None
        self.set_epoch(0)

    # ------------------------------------------------------------------ state
    @property
    def lrs(self) -> Tensor:
        """Current learning rates, one per group (float64; on the parameters' device from the first meta step)."""
        return self._lrs

    @property
    def num_skipped(self) -> int:
        """Meta steps skipped because the meta loss or hypergradient was not finite."""
        return int(self._skipped)

    @property
    def history(self) -> dict[str, Tensor]:
        """Per meta step: ``step`` (optimizer step, 1-based), ``lr`` [N, G] after the update,
        ``hypergrad`` [N, G], ``meta_loss`` [N], ``skipped`` [N] (CPU tensors)."""
        return self._history.as_dict()

    def set_epoch(self, epoch: int) -> None:
        """Tell MetaLR the (0-based) training epoch; it decides which groups are still held fixed."""
        self.epoch = int(epoch)
        held = self.epoch < self.fixed_epochs
        mask = [held and name in self.fixed_groups for name in self.group_names]
        self._fixed = torch.tensor(mask, dtype=torch.bool, device=self._lrs.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: LRs, counters, meta-loader position and history."""
        return {
            "group_names": list(self.group_names),
            "lrs": self._lrs.detach().cpu().clone(),
            "epoch": self.epoch,
            "num_calls": self.num_calls,
            "num_meta_steps": self.num_meta_steps,
            "num_skipped": self.num_skipped,
            "stream": self.stream.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the LRs are written back into the optimizer.

        Raises:
            ValueError: the state was saved for other layer groups.
        """
        if list(state["group_names"]) != self.group_names:
            raise ValueError(
                f"MetaLR state is for groups {list(state['group_names'])}, this run has {self.group_names}"
            )
        device = self._device()
        self._lrs = state["lrs"].to(device=device, dtype=torch.float64).clone()
        self._skipped = torch.tensor(int(state["num_skipped"]), device=device)
        self.num_calls, self.num_meta_steps = int(state["num_calls"]), int(state["num_meta_steps"])
        self.stream.load_state_dict(state["stream"])
        self._history.load(state["history"], device)
        self.set_epoch(int(state["epoch"]))
        self._publish_lrs()

    # ------------------------------------------------------------------ the meta step
    def step(self) -> Tensor | None:
        """Run the meta step for the gradients now in ``.grad`` and write the new LRs into the optimizer.

        Returns:
            the hypergradient ``h`` ([G], ``h_j = dL_val/dalpha_j``), or ``None`` when this call was skipped
            by ``interval`` or (for CPU tensors) because the meta loss or ``h`` was not finite. On CUDA the
            finiteness check stays on the device (no sync): the LRs are left unchanged and the skip is
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
            self._look_ahead()
            meta_loss, grad_scale = self._meta_backward()
            h = self._hypergradient()
            if grad_scale is not None:
                h = h / grad_scale
            h, meta_loss = self._all_reduce(h, meta_loss.detach().to(torch.float64))
            finite = torch.isfinite(h).all() & torch.isfinite(meta_loss)
            self._update_lrs(h, finite)
            self.num_meta_steps += 1
            self._history.append(self.num_calls, meta_loss, ~finite, self._lrs, h)
            self._publish_lrs()
        if self._lrs.device.type == "cpu" and not bool(finite):
            return None
        return h

    @torch.no_grad()
    def _look_ahead(self) -> None:
        """``lookahead <- theta - alpha_j * u`` for every group, in the flat buffer."""
        scratch = None
        if self.direction.needs_scratch:  # transient: freed before the meta forward allocates activations
            scratch = self._layout.views(torch.empty_like(self._lookahead), self.params)
        self.direction.write_(self._la_views, scratch)  # lookahead <- u
        del scratch
        rows = self._layout.rows(self._lookahead)
        rows.mul_(self._layout.per_row(-self._lrs.to(rows.dtype)).unsqueeze(1))  # one kernel for all groups
        torch._foreach_add_(self._la_views, self.params)

    @torch.no_grad()
    def _hypergradient(self) -> Tensor:
        """``h_j = -sum_{p in j} <v_p, u_p>`` (float64) from the meta gradients in the leaves' ``.grad``.

        The look-ahead buffer is overwritten with ``v * u`` and the meta gradients are released.
        """
        v = []
        for leaf in self._leaves.values():
            # a parameter the meta forward did not use has no gradient: v = 0
            v.append(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
            leaf.grad = None
        self.direction.product_(v, self._la_views)  # lookahead <- v * u (v is overwritten)
        return -self._layout.segment_sums(self._lookahead)

    def _update_lrs(self, h: Tensor, finite: Tensor) -> None:
        lo, hi = self.lr_bounds
        if self.update == "multiplicative":
            new = self._lrs * (1.0 - self.hyper_lr * h)
        else:
            new = self._lrs - self.hyper_lr * h
        new = new.clamp(lo, hi)
        keep = self._fixed | ~finite
        self._lrs = torch.where(keep, self._lrs, new)
        self._skipped += (~finite).long()

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
            pred = torch.func.functional_call(
                self.module,
                (self._leaves, self._buffer_copies),
                (inputs, *args),
                kwargs,
                tie_weights=True,
                strict=False,
            )
            loss = self.loss_function(pred, targets).mean()
        grad_scale = None
        to_backward = loss
        if self.scaler is not None and getattr(self.scaler, "is_enabled", lambda: True)():
            grad_scale = self.scaler.scale(torch.ones((), device=loss.device, dtype=torch.float32)).to(torch.float64)
            to_backward = self.scaler.scale(loss)
        torch.autograd.backward(to_backward, inputs=list(self._leaves.values()))
        # a tensor subclass (MONAI's MetaTensor from a MONAI pipeline) must not leak into the LR state
        return loss.detach().as_subclass(torch.Tensor), grad_scale

    @staticmethod
    def _all_reduce(h: Tensor, meta_loss: Tensor) -> tuple[Tensor, Tensor]:
        """Average h and the meta loss over ranks, so every rank holds identical LRs."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            packed = torch.cat([h, meta_loss.reshape(1)])
            dist.all_reduce(packed)
            packed /= dist.get_world_size()
            return packed[:-1], packed[-1]
        return h, meta_loss

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
        self._lrs = self._lrs.to(p0.device)
        self._skipped = self._skipped.to(p0.device)
        self._fixed = self._fixed.to(p0.device)

    def _publish_lrs(self) -> None:
        """Write the LRs into ``optimizer.param_groups`` (device tensors where the optimizer takes them)."""
        if self._lrs.device.type != "cpu" and _takes_tensor_lr(self.optimizer):
            if self._opt_lrs is None or self._opt_lrs.device != self._lrs.device:
                self._opt_lrs = torch.empty(len(self.group_names), device=self._lrs.device, dtype=torch.float32)
            self._opt_lrs.copy_(self._lrs)
            for j, group in enumerate(self.optimizer.param_groups):
                group["lr"] = self._opt_lrs[j]
            return
        if self._lrs.device.type != "cpu" and not getattr(self, "_warned_sync", False):
            warnings.warn(
                f"{type(self.optimizer).__name__} without fused=True or capturable=True takes float LRs: "
                "MetaLR copies them to the host once per meta step",
                stacklevel=3,
            )
            self._warned_sync = True
        for group, lr in zip(self.optimizer.param_groups, self._lrs.tolist()):
            group["lr"] = lr


def _takes_tensor_lr(optimizer: torch.optim.Optimizer) -> bool:
    """Optimizers whose CUDA step reads a device-tensor LR without converting it to a Python float."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)):
        return all(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    return False
