"""The meta step as the MetaLR authors' code structures it, rebuilt from the paper's description.

It is the baseline of ``step_cost.py`` and is not used by the library. Per training step it runs:

1. a meta-model rebuilt from the model (a deep copy, as the authors construct a fresh ``MetaModule``);
2. the training batch through the meta-model, and the inner gradient with ``create_graph=True``;
3. the look-ahead ``theta_hat = theta - alpha_j * g`` as non-leaf tensors that keep that graph, and the
   held-out batch through them; the hypergradient is ``autograd.grad(meta_loss, alpha)`` with the
   second-order graph alive;
4. the LR update, then a third pass: the training batch again through the real model, backward and the
   real optimizer step.

The authors' sign defect (their virtual step is ``theta + alpha*g``) is not copied: the look-ahead
descends, so the hypergradient is the same quantity MetaLR computes with ``lookahead="sgd"``; only
the cost differs. ``tests/studies/test_benchmarks.py`` checks that equality.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class AuthorsStyleStep:
    """One authors'-style training step per call (three passes, a second-order graph, a rebuilt model).

    Args:
        model: the network; its optimizer param groups are the layer groups.
        optimizer: the real optimizer, stepped once per call with the updated LRs.
        loss_function: ``loss_function(pred, target)``.
        meta_batch: ``(inputs, targets)`` of held-out data, already on the model's device.
        hyper_lr: step size of the multiplicative LR update.
        lr_bounds: LRs are clamped to this range.
        autocast_kwargs: if given, every forward runs under ``torch.autocast(**autocast_kwargs)``.
        scaler: a ``torch.amp.GradScaler`` for the real (third) pass.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable[[Tensor, Tensor], Tensor],
        meta_batch: tuple[Tensor, Tensor],
        hyper_lr: float = 1e-4,
        lr_bounds: tuple[float, float] = (1e-6, 1e-2),
        autocast_kwargs: dict[str, Any] | None = None,
        scaler: Any | None = None,
    ) -> None:
        self.model, self.optimizer, self.loss_function = model, optimizer, loss_function
        self.meta_batch, self.hyper_lr, self.lr_bounds = meta_batch, hyper_lr, lr_bounds
        self.autocast_kwargs, self.scaler = autocast_kwargs, scaler
        first = next(model.parameters())
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.alphas = torch.tensor(lrs, device=first.device, dtype=first.dtype)
        group_of = {id(p): j for j, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self.names = [n for n, p in model.named_parameters() if id(p) in group_of]
        self.group_index = [group_of[id(p)] for n, p in model.named_parameters() if id(p) in group_of]

    def _autocast(self):
        return torch.autocast(**self.autocast_kwargs) if self.autocast_kwargs else contextlib.nullcontext()

    def hypergradient(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Passes 1 and 2: ``h_j = dL_val(theta - alpha*g)/dalpha_j`` through a second-order graph."""
        meta_model = copy.deepcopy(self.model)
        params = dict(meta_model.named_parameters())
        weights = [params[n] for n in self.names]
        alphas = self.alphas.clone().requires_grad_(True)
        with self._autocast():
            loss = self.loss_function(meta_model(inputs), targets)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        lookahead = {n: w - alphas[j] * g for n, w, j, g in zip(self.names, weights, self.group_index, grads)}
        meta_inputs, meta_targets = self.meta_batch
        with self._autocast():
            meta_pred = torch.func.functional_call(meta_model, lookahead, (meta_inputs,), strict=False)
            meta_loss = self.loss_function(meta_pred, meta_targets)
        (h,) = torch.autograd.grad(meta_loss, alphas)
        return h

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """One full step; returns the hypergradient it used."""
        h = self.hypergradient(inputs, targets)
        with torch.no_grad():
            self.alphas.mul_(1.0 - self.hyper_lr * h).clamp_(*self.lr_bounds)
        for group, lr in zip(self.optimizer.param_groups, self.alphas.tolist()):
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss_function(self.model(inputs), targets)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return h
