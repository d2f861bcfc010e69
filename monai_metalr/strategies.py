"""Fine-tuning strategies: the baselines MetaLR is compared with, and MetaLR itself, behind one config key.

Every strategy is built from ``(name, network, lr, head_lr, groups)`` by :func:`make_strategy` and gives

- :meth:`~FineTuningStrategy.param_groups`: optimizer parameter groups, one per layer group, each with its
  ``"name"`` (the layer-group name of :func:`monai_metalr.layer_groups`, ordered input -> output; the last
  group is the head);
- :meth:`~FineTuningStrategy.wrap_loss`: the training loss (only ``l2sp`` adds a penalty);
- :meth:`~FineTuningStrategy.optimizer_class`: the optimizer class, the bundle's default (Adam) except for the
  optimizer peers ``prodigy``, ``dadaptation`` (LR-free: every group at ``lr=1.0``) and ``schedulefree``;
- :meth:`~FineTuningStrategy.set_epoch`, :meth:`~FineTuningStrategy.attach`,
  :meth:`~FineTuningStrategy.check_training`: what :class:`monai_metalr.handlers.StrategyHandler` runs in a trainer
  (the epoch-wise freezing schedule, the strategy's own events, its checks), and ``learns_lrs``: whether the
  handler should get a :class:`~monai_metalr.handlers.MetaLRHandler` (``metalr``).

Bundle config::

    "strategy": "lpft", "strategy_kwargs": {"probe_epochs": 5},
    "strategy_def": "$monai_metalr.strategies.make_strategy(@strategy, @network, lr=@lr, head_lr=@head_lr,
                     **@strategy_kwargs)",
    "optimizer": {"_target_": "$@strategy_def.optimizer_class(torch.optim.Adam)",
                  "params": "$@strategy_def.param_groups()"},
    "loss": "$@strategy_def.wrap_loss(@base_loss)",
    "metalr_handler": {"_target_": "monai_metalr.handlers.MetaLRHandler", "_disabled_": "$not @use_metalr",
                       "meta_loader": "@meta#dataloader", ...},
    "train#handlers": [..., {"_target_": "monai_metalr.handlers.StrategyHandler", "strategy": "@strategy_def",
                             "metalr": "@metalr_handler"}, "LrScheduleHandler ...", "ValidationHandler ...", ...]

A frozen group has ``requires_grad=False``, ``.grad`` set to ``None`` (so ``torch.optim`` skips it even
when the trainer zeroes gradients instead of dropping them), and all its modules in eval mode at every
forward of the network (a forward pre-hook: MONAI's ``SupervisedTrainer`` calls ``network.train()``
inside every iteration, after ``ITERATION_STARTED``), so BatchNorm running statistics stay put.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._ignite import Engine, Events
from .groups import GroupsSpec, layer_groups, param_groups, unwrap_model

__all__ = [
    "L2SP",
    "LPFT",
    "STRATEGIES",
    "AllLayers",
    "Bidirectional",
    "DAdaptation",
    "FineTuningStrategy",
    "Hypergradient",
    "HypergradientDescent",
    "L2SPLoss",
    "LastLayer",
    "LayerDecay",
    "MetaLRStrategy",
    "Prodigy",
    "ScheduleFree",
    "make_strategy",
]

logger = logging.getLogger("monai_metalr.strategies")


def _group_root_modules(model: nn.Module, spec: dict[str, list[str]]) -> tuple[dict[str, list[nn.Module]], list[str]]:
    """Per group, the largest submodules whose parameters all belong to that group (``.eval()`` on them
    reaches every descendant, parameter-free ones such as ``BatchNorm(affine=False)`` included); and the
    names of modules with buffers that lie under no such root (their mode follows the network's)."""
    owner = {pname: g for g, names in spec.items() for pname in names}
    under: dict[str, set[str]] = {}
    for pname, g in owner.items():
        parts = pname.split(".")[:-1]
        for i in range(len(parts) + 1):
            under.setdefault(".".join(parts[:i]), set()).add(g)
    roots: dict[str, list[nn.Module]] = {g: [] for g in spec}
    root_names: list[str] = []
    for mname, module in model.named_modules():
        if not mname or len(under.get(mname, ())) != 1:
            continue
        parent = mname.rsplit(".", 1)[0] if "." in mname else ""
        if under.get(parent) != under[mname]:
            (g,) = under[mname]
            roots[g].append(module)
            root_names.append(mname)
    orphans = [
        mname
        for mname, module in model.named_modules()
        if any(True for _ in module.buffers(recurse=False))
        and not any(mname == r or mname.startswith(r + ".") for r in root_names)
    ]
    return roots, orphans


def _check_positive(strategy: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"strategy {strategy!r}: {name} must be a positive number, got {value!r}")


def _check_number(strategy: str, name: str, value: Any, accept: Callable[[float], bool], what: str) -> float:
    # bools are ints to Python, and a flag where a number belongs is a config mistake
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not accept(value):
        raise ValueError(f"strategy {strategy!r}: {name} must be {what}, got {value!r}")
    return float(value)


def _check_count(strategy: str, name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"strategy {strategy!r}: {name} must be an integer >= {least}, got {value!r}")
    return value


def _check_ddp(network: nn.Module, strategy: str) -> None:
    """A DDP-wrapped network whose trainable set changes after wrapping needs ``find_unused_parameters``."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        if not getattr(network, "find_unused_parameters", False) or getattr(network, "static_graph", False):
            raise ValueError(
                f"strategy {strategy!r} freezes layer groups of a network already wrapped in "
                "DistributedDataParallel: wrap it with find_unused_parameters=True (and static_graph=False)"
            )


class FineTuningStrategy:
    """Base class: every layer group trains at ``lr`` (the head at ``head_lr``), nothing is frozen.

    Args:
        network: the (pre-trained) network; DDP / DataParallel / ``torch.compile`` wrappers are seen through.
        lr: learning rate of the non-head groups.
        head_lr: learning rate of the head (the last layer group); ``None`` means ``lr``.
        groups: layer groups, as for :func:`monai_metalr.layer_groups` (computed once, at construction).

    Raises:
        ValueError: a non-positive ``lr`` / ``head_lr``, or what :func:`~monai_metalr.layer_groups` raises.
    """

    name: ClassVar[str] = "base"
    #: whether the set of trainable groups can change during training (needs the handler / ``set_epoch``)
    changes_trainable: ClassVar[bool] = False
    #: the least number of layer groups the strategy works with
    min_groups: ClassVar[int] = 1
    #: whether the LRs are meta-learned: :class:`~monai_metalr.handlers.StrategyHandler` then attaches MetaLR
    learns_lrs: ClassVar[bool] = False

    def __init__(
        self, network: nn.Module, lr: float, head_lr: float | None = None, groups: GroupsSpec = "auto", **options: Any
    ) -> None:
        _check_positive(self.name, "lr", lr)
        _check_positive(self.name, "head_lr", head_lr, allow_none=True)
        # the strategy's own arguments first: a bad value is refused before the layer groups are computed
        checked = self.check_options(**options)
        self.network = network
        self.inner = unwrap_model(network)
        self.lr = float(lr)
        self.head_lr = float(head_lr) if head_lr is not None else None
        self.groups_spec = groups
        self.layer_groups: dict[str, list[str]] = layer_groups(self.inner, groups)
        self.group_names: list[str] = list(self.layer_groups)
        if len(self.group_names) < self.min_groups:
            raise ValueError(
                f"strategy {self.name!r} needs at least {self.min_groups} layer groups, "
                f"the network has {len(self.group_names)}: {self.group_names}"
            )
        self.head: str = self.group_names[-1]
        named = dict(self.inner.named_parameters())
        self.group_params: dict[str, list[nn.Parameter]] = {
            g: [named[n] for n in names] for g, names in self.layer_groups.items()
        }
        self._roots, self._orphans = _group_root_modules(self.inner, self.layer_groups)
        self._frozen: frozenset[str] = frozenset()
        self._trainable: tuple[str, ...] | None = None
        self._announced: tuple[str, ...] | None = None
        self._hook: Any = None
        for option, value in checked.items():
            setattr(self, option, value)
        self.setup()

    def check_options(self) -> dict[str, Any]:
        """Validate the strategy's own arguments (a subclass declares them, typed and with defaults, as this method's
        keyword parameters; :func:`make_strategy` accepts exactly those) and return them converted; they become
        attributes. The base strategy takes none."""
        return {}

    def setup(self) -> None:
        """Called at the end of construction, with the layer groups and the options in place (freeze, hooks)."""

    # ------------------------------------------------------------------ what the optimizer gets
    def group_lrs(self) -> dict[str, float]:
        """Learning rate of every layer group that is in the optimizer."""
        head = self.head_lr if self.head_lr is not None else self.lr
        return {g: (head if g == self.head else self.lr) for g in self.optimized_groups()}

    def optimized_groups(self) -> list[str]:
        """Names of the layer groups handed to the optimizer (all, except for ``last_layer``)."""
        return list(self.group_names)

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups ``{"params", "lr", "name"}``, input -> output order."""
        lrs = self.group_lrs()
        return [{"params": list(self.group_params[g]), "lr": lrs[g], "name": g} for g in self.optimized_groups()]

    def optimizer_class(self, default: type[Optimizer]) -> type[Optimizer]:
        """The optimizer class to build with :meth:`param_groups`: ``default`` (the bundle's ``torch.optim.Adam``)
        for every strategy except ``prodigy``, ``dadaptation`` and ``schedulefree``, which return their package's."""
        return default

    def attach(self, engine: Engine) -> None:
        """Extra Ignite handlers of the strategy, registered by ``StrategyHandler.attach``; none here."""

    # ------------------------------------------------------------------ loss and handlers
    def wrap_loss(self, loss_function: Callable) -> Callable:
        """The training loss; the base class returns ``loss_function`` itself."""
        return loss_function

    def check_training(self, network: nn.Module | None, optimizer: Optimizer | None) -> None:
        """Called by :class:`~monai_metalr.handlers.StrategyHandler` when training starts, with the trainer's
        network and optimizer (either may be ``None``): refuse or warn about settings that work against the strategy.
        Here: a DDP-wrapped network whose trainable set changes needs ``find_unused_parameters=True``."""
        if network is not None and self.changes_trainable:
            _check_ddp(network, self.name)

    # ------------------------------------------------------------------ freezing schedule
    def trainable_groups(self, epoch: int) -> list[str]:
        """Layer groups that train during (0-based) ``epoch``, input -> output order."""
        return list(self.group_names)

    def describe(self, epoch: int) -> dict[str, Any]:
        """What trains during (0-based) ``epoch``: ``strategy``, ``epoch``, ``trainable``, ``frozen``, ``lr``."""
        trainable = self.trainable_groups(epoch)
        return {
            "strategy": self.name,
            "epoch": epoch,
            "trainable": trainable,
            "frozen": [g for g in self.group_names if g not in trainable],
            "lr": self.group_lrs(),
        }

    def set_epoch(self, epoch: int) -> None:
        """Apply the schedule for (0-based) ``epoch``: requires_grad, ``.grad`` and module modes per group.

        Logs on logger ``monai_metalr.strategies`` whenever the trainable set changes (and at the first call).
        ``StrategyHandler`` calls it at every ``EPOCH_STARTED``; in a plain loop call it before each epoch.
        """
        trainable = tuple(self.trainable_groups(epoch))
        if trainable != self._trainable:
            self._apply(trainable)
        if trainable == self._announced:
            return
        self._announced = trainable
        frozen = [g for g in self.group_names if g not in trainable]
        logger.info(
            f"strategy {self.name}: epoch {epoch + 1}: training {len(trainable)}/{len(self.group_names)} groups "
            f"{list(trainable)}" + (f", frozen {frozen}" if frozen else "")
        )

    @property
    def frozen_groups(self) -> list[str]:
        """Layer groups frozen right now."""
        return [g for g in self.group_names if g in self._frozen]

    def _apply(self, trainable: Sequence[str]) -> None:
        keep = set(trainable)
        newly_trainable = [g for g in self.group_names if g in keep and g in self._frozen]
        for g in self.group_names:
            for p in self.group_params[g]:
                p.requires_grad_(g in keep)
                if g not in keep:
                    p.grad = None  # torch.optim skips a parameter whose .grad is None
        self._frozen = frozenset(g for g in self.group_names if g not in keep)
        self._trainable = tuple(trainable)
        for g in newly_trainable:  # back to the network's mode (the trainer sets it again every iteration)
            for m in self._roots[g]:
                m.train(self.inner.training)
        self._enforce_frozen_modes()
        if self._frozen and self._hook is None:
            self._install_hook()

    def _install_hook(self) -> None:
        if self._orphans:
            logger.warning(
                f"strategy {self.name}: modules {self._orphans[:8]} hold buffers but are in no layer group; "
                "they follow the network's train/eval mode even when groups are frozen"
            )
        self._hook = self.inner.register_forward_pre_hook(self._pre_forward)

    def _pre_forward(self, module: nn.Module, args: Any) -> None:
        self._enforce_frozen_modes()

    def _enforce_frozen_modes(self) -> None:
        for g in self._frozen:
            for m in self._roots[g]:
                m.train(False)

    def remove_hooks(self) -> None:
        """Remove the forward pre-hook that keeps frozen groups in eval mode."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(groups={self.group_names}, lr={self.lr}, head_lr={self.head_lr})"


class LastLayer(FineTuningStrategy):
    """``last_layer``: linear probing. Only the head (last layer group) trains, at ``head_lr`` (or ``lr``).

    Every other group is frozen from construction on: ``requires_grad=False``, left out of
    :meth:`param_groups` (the optimizer holds the head only), and its modules kept in eval mode at every
    forward, so its parameters and buffers (BatchNorm running statistics) stay bit-identical.

    Under DDP, build the strategy on the bare network before wrapping it (DDP then ignores the frozen
    parameters), or wrap with ``find_unused_parameters=True``; a network already wrapped without it is
    a ``ValueError``.
    """

    name = "last_layer"

    def setup(self) -> None:
        if len(self.group_names) > 1:
            _check_ddp(self.network, self.name)
        self._apply([self.head])

    def optimized_groups(self) -> list[str]:
        return [self.head]

    def trainable_groups(self, epoch: int) -> list[str]:
        return [self.head]


class AllLayers(FineTuningStrategy):
    """``all_layers``: conventional fine-tuning, every layer group at one learning rate ``lr``.

    ``head_lr`` is ignored unless ``separate_head=True`` (then the head gets ``head_lr``, the rest ``lr``).

    Args:
        separate_head: give the head its own learning rate ``head_lr``.
    """

    name = "all_layers"

    def check_options(self, separate_head: bool = False) -> dict[str, Any]:
        if not isinstance(separate_head, bool):
            raise ValueError(f"strategy {self.name!r}: separate_head must be a bool, got {separate_head!r}")
        return {"separate_head": separate_head}

    def setup(self) -> None:
        if not self.separate_head:
            self.head_lr = None  # validated all the same, then unused


class LayerDecay(FineTuningStrategy):
    """``layer_decay``: layer-wise learning-rate decay (ULMFiT's discriminative fine-tuning, BEiT/timm).

    With G groups j = 0 (input) .. G-1 (head) and base = ``head_lr`` if given else ``lr``:
    ``lr_j = base * decay ** (G - 1 - j)``; the head gets the full base rate. ULMFiT uses
    ``decay = 1 / 2.6``; BEiT/timm fine-tuning typically 0.65 - 0.75.

    Args:
        decay: factor per group, in (0, 1].
    """

    name = "layer_decay"

    def check_options(self, decay: float = 0.7) -> dict[str, Any]:
        return {"decay": _check_number(self.name, "decay", decay, lambda v: 0 < v <= 1, "in (0, 1]")}

    def group_lrs(self) -> dict[str, float]:
        base = self.head_lr if self.head_lr is not None else self.lr
        n = len(self.group_names)
        return {g: base * self.decay ** (n - 1 - j) for j, g in enumerate(self.group_names)}


class Bidirectional(FineTuningStrategy):
    """``bidirectional``: progressive unfreezing top-down, then bottom-up (our reading of the MetaLR paper's
    "bi-directional" baseline; see docs/strategies.md for the source and what could not be checked).

    Groups j = 0 (input) .. H = G-1 (head); stage ``s = epoch // epochs_per_stage``. Each direction is a
    sweep of G stages k = 0..G-1 that starts from the head alone and ends with every group trainable:

    - ``"top_down"``, stage k: groups ``H-k .. H`` train (unfreeze from the head towards the input);
    - ``"bottom_up"``, stage k: groups ``0 .. k-1`` and the head train (unfreeze from the input upwards).

    The sweeps run in the order of ``directions``; after the last stage (``len(directions) * G *
    epochs_per_stage`` epochs) every group trains. All groups are in the optimizer from the start (groups at
    ``lr``, head at ``head_lr``); frozen ones have ``requires_grad=False`` and ``.grad=None`` and their
    modules in eval mode, so they do not change.

    Args:
        epochs_per_stage: epochs per stage (>= 1).
        directions: sweeps to run, in order: any sequence of ``"top_down"`` and ``"bottom_up"``
            (``["top_down"]`` alone is ULMFiT's gradual unfreezing).
    """

    name = "bidirectional"
    changes_trainable = True
    min_groups = 2
    DIRECTIONS: ClassVar[tuple[str, ...]] = ("top_down", "bottom_up")

    def check_options(
        self, epochs_per_stage: int = 1, directions: Sequence[str] = ("top_down", "bottom_up")
    ) -> dict[str, Any]:
        if isinstance(directions, str) or not directions or any(d not in self.DIRECTIONS for d in directions):
            raise ValueError(
                f"strategy {self.name!r}: directions must be a non-empty sequence of {list(self.DIRECTIONS)}, "
                f"got {directions!r}"
            )
        return {
            "epochs_per_stage": _check_count(self.name, "epochs_per_stage", epochs_per_stage, 1),
            "directions": tuple(directions),
        }

    def setup(self) -> None:
        _check_ddp(self.network, self.name)
        self._install_hook()

    @property
    def num_stages(self) -> int:
        """Stages in the schedule; every group trains from epoch ``num_stages * epochs_per_stage`` on."""
        return len(self.directions) * len(self.group_names)

    def trainable_groups(self, epoch: int) -> list[str]:
        n = len(self.group_names)
        stage = epoch // self.epochs_per_stage
        if stage >= self.num_stages:
            return list(self.group_names)
        direction, k = self.directions[stage // n], stage % n
        if direction == "top_down":
            keep = set(range(n - 1 - k, n))
        else:
            keep = set(range(k)) | {n - 1}
        return [g for j, g in enumerate(self.group_names) if j in keep]


class LPFT(FineTuningStrategy):
    """``lpft``: linear probing, then full fine-tuning (Kumar et al., ICLR 2022).

    Epochs ``0 .. probe_epochs-1``: only the head trains (as ``last_layer``, frozen groups' modules in eval
    mode, bit-identical); from epoch ``probe_epochs`` on every group trains, groups at ``lr`` and the head
    at ``head_lr`` (pass ``head_lr=None`` for Kumar et al.'s single fine-tuning rate ``lr``; the probe then
    also uses ``lr``). All groups are in the optimizer from the start.

    Args:
        probe_epochs: epochs of linear probing (>= 0; 0 is plain fine-tuning).
    """

    name = "lpft"
    changes_trainable = True
    min_groups = 2

    def check_options(self, probe_epochs: int = 5) -> dict[str, Any]:
        return {"probe_epochs": _check_count(self.name, "probe_epochs", probe_epochs, 0)}

    def setup(self) -> None:
        _check_ddp(self.network, self.name)
        self._install_hook()

    def trainable_groups(self, epoch: int) -> list[str]:
        return [self.head] if epoch < self.probe_epochs else list(self.group_names)


class L2SPLoss(nn.Module):
    """``base(pred, target) + strategy.penalty()`` (the L2-SP training loss)."""

    def __init__(self, base: Callable, strategy: L2SP) -> None:
        super().__init__()
        self.base = base
        self.strategy = strategy

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return self.base(input, target) + self.strategy.penalty()


class L2SP(FineTuningStrategy):
    """``l2sp``: fine-tune every group, pulled towards the pre-trained weights (Li et al., ICML 2018).

    Loss ``L + alpha/2 * sum_{w not in head} ||w - w0||^2 + beta/2 * sum_{w in head} ||w||^2``, where ``w0`` are
    detached copies of the weights at construction (the pre-trained ones; build the strategy after loading
    them) and the sums run over every parameter of the layer groups (BatchNorm affine parameters and biases
    included). Groups at ``lr``, head at ``head_lr``. Use the optimizer with ``weight_decay=0``: L2-SP
    replaces weight decay (decay pulls towards 0, against the SP term); ``StrategyHandler`` warns if
    the optimizer has weight decay.

    Args:
        alpha: strength of the pull towards ``w0`` (>= 0).
        beta: plain L2 strength on the head (>= 0).
    """

    name = "l2sp"

    def check_options(self, alpha: float = 0.01, beta: float = 0.01) -> dict[str, Any]:
        return {
            arg: _check_number(self.name, arg, value, lambda v: v >= 0, "a number >= 0")
            for arg, value in (("alpha", alpha), ("beta", beta))
        }

    def setup(self) -> None:
        self.reference: dict[str, list[Tensor]] = {
            g: [p.detach().clone() for p in self.group_params[g]] for g in self.group_names if g != self.head
        }

    def check_training(self, network: nn.Module | None, optimizer: Optimizer | None) -> None:
        """Warn if the optimizer applies weight decay on top of the L2-SP penalty."""
        super().check_training(network, optimizer)
        if optimizer is not None and any(float(g.get("weight_decay", 0.0) or 0.0) > 0 for g in optimizer.param_groups):
            logger.warning(
                "strategy l2sp: the optimizer applies weight_decay on top of the L2-SP penalty (a pull towards "
                "0 against the pull towards the pre-trained weights); use weight_decay=0"
            )

    def penalty(self) -> Tensor:
        """``alpha/2 * ||w - w0||^2`` over non-head groups plus ``beta/2 * ||w_head||^2``, a differentiable scalar."""
        head = self.group_params[self.head]
        sp = head[0].new_zeros(())
        for g, refs in self.reference.items():
            for j, (p, p0) in enumerate(zip(self.group_params[g], refs)):
                if p0.device != p.device or p0.dtype != p.dtype:  # the network moved after construction
                    p0 = refs[j] = p0.to(device=p.device, dtype=p.dtype)
                sp = sp + (p - p0).pow(2).sum()
        l2 = head[0].new_zeros(())
        for p in head:
            l2 = l2 + p.pow(2).sum()
        return 0.5 * self.alpha * sp + 0.5 * self.beta * l2

    def wrap_loss(self, loss_function: Callable) -> L2SPLoss:
        """``L2SPLoss(loss_function, self)``: the base loss plus :meth:`penalty`."""
        return L2SPLoss(loss_function, self)


class MetaLRStrategy(FineTuningStrategy):
    """``metalr``: per-layer learning rates learned online by MetaLR (Chen et al., MICCAI 2023).

    :meth:`param_groups` is :func:`monai_metalr.param_groups` (groups at ``lr``, head at ``head_lr``: the
    initial LRs); ``learns_lrs`` is true, so :class:`~monai_metalr.handlers.StrategyHandler` expects a
    :class:`~monai_metalr.handlers.MetaLRHandler` on a held-out split (without one it is a control run: the initial
    LRs stay).
    """

    name = "metalr"
    min_groups = 2
    learns_lrs = True

    def param_groups(self) -> list[dict]:
        return param_groups(self.network, self.lr, self.groups_spec, head_lr=self.head_lr)



def _import_optimizer(strategy: str, package: str, module: str, attr: str) -> type[Optimizer]:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"strategy {strategy!r} needs the package {package!r} (pip install {package}); it is a dependency of "
            "monai-metalr, reinstall it"
        ) from e
    return getattr(mod, attr)


class _PackageOptimizer(FineTuningStrategy):
    """Every layer group trains (as ``all_layers``), with an optimizer from a package instead of Adam.

    :meth:`optimizer_class` returns the package's class whatever the bundle's default; :meth:`param_groups`
    puts the strategy's LR and ``optimizer_kwargs`` into every group (so they override the bundle's
    ``optimizer#lr``; the bundle's ``weight_decay`` still applies).

    Args:
        optimizer_kwargs: further arguments of the package's optimizer (e.g. ``d_coef``, ``betas``,
            ``warmup_steps``), put into every parameter group; names it does not take are a ``TypeError``.
    """

    package: ClassVar[str] = ""
    module: ClassVar[str] = ""
    attr: ClassVar[str] = ""

    def check_options(self, optimizer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        optimizer_cls = _import_optimizer(self.name, self.package, self.module, self.attr)
        kwargs = dict(optimizer_kwargs or {})
        accepted = [
            p for p in inspect.signature(optimizer_cls.__init__).parameters if p not in ("self", "params", "lr")
        ]
        unknown = sorted(k for k in kwargs if k not in accepted)
        if unknown:
            raise TypeError(
                f"strategy {self.name!r}: optimizer_kwargs {unknown} are not arguments of "
                f"{optimizer_cls.__module__}.{optimizer_cls.__name__} (it takes {accepted})"
            )
        return {"optimizer_cls": optimizer_cls, "optimizer_kwargs": kwargs}

    def optimizer_class(self, default: type[Optimizer]) -> type[Optimizer]:
        return self.optimizer_cls

    def param_groups(self) -> list[dict]:
        return [{**group, **self.optimizer_kwargs} for group in super().param_groups()]


class _LRFree(_PackageOptimizer):
    """An LR-free optimizer: it estimates the step size ``d`` itself, and every group's ``lr`` is a multiplier of
    ``d``, 1.0 by the packages' convention. The bundle's ``lr`` / ``head_lr`` are validated and then ignored
    (the head gets the same multiplier as the rest: one ``d`` for the whole network).

    Args:
        lr_scale: the ``lr`` (multiplier of ``d``) of every group; 1.0 is the packages' recommendation.
        optimizer_kwargs: as for the package's optimizer (``d_coef``, ``betas``, ``growth_rate``, ...).
    """

    def check_options(self, lr_scale: float = 1.0, optimizer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        _check_positive(self.name, "lr_scale", lr_scale)
        return {**super().check_options(optimizer_kwargs), "lr_scale": float(lr_scale)}

    def setup(self) -> None:
        logger.info(
            f"strategy {self.name}: LR-free ({self.package}); every group at lr={self.lr_scale} (a multiplier of the "
            f"learned step size), the bundle's lr={self.lr} / head_lr={self.head_lr} are not used"
        )

    def group_lrs(self) -> dict[str, float]:
        return {g: self.lr_scale for g in self.optimized_groups()}


class Prodigy(_LRFree):
    """``prodigy``: every group trains with ``prodigyopt.Prodigy`` (Mishchenko & Defazio, ICML 2024), an Adam
    whose step size is estimated online; every group at ``lr=lr_scale`` (1.0), the bundle's LRs unused.
    Prodigy uses decoupled (AdamW-style) weight decay by default; its authors recommend a cosine schedule
    (``lr_schedule="cosine"``) and ``optimizer_kwargs={"safeguard_warmup": True}``
    when warming up."""

    name = "prodigy"
    package = "prodigyopt"
    module = "prodigyopt"
    attr = "Prodigy"


class DAdaptation(_LRFree):
    """``dadaptation``: every group trains with ``dadaptation.DAdaptAdam`` (Defazio & Mishchenko, ICML 2023),
    Adam with D-Adaptation of the step size; every group at ``lr=lr_scale`` (1.0), the bundle's LRs unused.
    Weight decay is Adam-style L2 unless ``optimizer_kwargs={"decouple": True}``."""

    name = "dadaptation"
    package = "dadaptation"
    module = "dadaptation"
    attr = "DAdaptAdam"


class ScheduleFree(_PackageOptimizer):
    """``schedulefree``: every group trains with ``schedulefree.AdamWScheduleFree`` (Defazio et al., NeurIPS 2024).

    Not LR-free: groups at the bundle's ``lr``, the head at ``head_lr``; it replaces the LR schedule (keep
    ``lr_schedule="constant"``; warm-up via ``optimizer_kwargs={"warmup_steps": n}``). The optimizer keeps two
    weight sequences and must be told which one the network holds: :meth:`attach` (run by
    :class:`~monai_metalr.handlers.StrategyHandler`) calls ``optimizer.train()`` at every ``ITERATION_STARTED`` and
    ``optimizer.eval()`` (the averaged weights, the ones to validate and save) at every ``EPOCH_COMPLETED``
    and at ``COMPLETED``. Put the ``StrategyHandler`` before ``ValidationHandler`` and checkpoint
    savers in ``train_handlers`` (the bundles do), so the switch runs first. BatchNorm running statistics
    are those collected with the training weights (not recomputed for the averaged ones).
    """

    name = "schedulefree"
    package = "schedulefree"
    module = "schedulefree"
    attr = "AdamWScheduleFree"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._train_mode)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._eval_mode)
        engine.add_event_handler(Events.COMPLETED, self._eval_mode)

    @staticmethod
    def _optimizer(engine: Engine) -> Any:
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is None or not hasattr(optimizer, "train") or not hasattr(optimizer, "eval"):
            raise TypeError(
                "strategy 'schedulefree': the trainer's optimizer must be schedulefree.AdamWScheduleFree "
                f"(build it with strategy.optimizer_class(...)), got {type(optimizer).__name__}"
            )
        return optimizer

    def _train_mode(self, engine: Engine) -> None:
        self._optimizer(engine).train()

    def _eval_mode(self, engine: Engine) -> None:
        self._optimizer(engine).eval()


class HypergradientDescent:
    """Per-group hypergradient descent on the learning rate (Baydin et al., ICLR 2018), on any ``torch.optim``
    optimizer whose step is ``lr`` times a direction (SGD, Adam; the "Adam-HD" of the paper for Adam).

    Before every ``optimizer.step()`` (a step pre-hook), for each param group ``j`` with parameters ``w``:
    ``h_j = -sum(grad_t * u_{t-1})`` over the group, where ``u_{t-1} = (w_{t-2} - w_{t-1}) / lr_j`` is the
    previous step's update direction (so ``d w_{t-1} / d lr_j = -u_{t-1}`` and ``h_j`` is
    ``d L(w_{t-1}) / d lr_j``), and ``lr_j <- max(lr_j - beta * h_j, min_lr_factor * initial lr_j)``; the step then
    runs at the new ``lr_j``. No extra forward or backward pass: the current training gradient and the last
    update only. The first step (and the first after a resume, the direction is not checkpointed) has no
    previous direction and leaves the LRs alone. Parameters whose ``.grad`` is ``None`` (frozen) are skipped.
    An LR scheduler that sets LRs from base values (e.g. cosine) overwrites the learned ones: use
    ``lr_schedule="constant"``.

    Args:
        optimizer: the optimizer; the hooks are registered on it at construction (:meth:`remove` removes them).
        beta: the hypergradient learning rate (the paper: 1e-7 for Adam, 1e-3 for SGD).
        min_lr_factor: floor of every group's LR, as a fraction of its LR at construction (> 0).
    """

    def __init__(self, optimizer: Optimizer, beta: float = 1e-7, min_lr_factor: float = 1e-3) -> None:
        _check_positive("hypergradient", "beta", beta)
        _check_positive("hypergradient", "min_lr_factor", min_lr_factor)
        self.optimizer = optimizer
        self.beta = float(beta)
        self.floors = [float(g["lr"]) * float(min_lr_factor) for g in optimizer.param_groups]
        self._before: list[list[Tensor | None]] = []
        self._direction: list[list[Tensor | None]] | None = None
        self._hooks = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    def _pre_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for j, group in enumerate(optimizer.param_groups):
            if self._direction is not None:
                dots = [
                    (p.grad.detach().double() * u.double()).sum()
                    for p, u in zip(group["params"], self._direction[j])
                    if p.grad is not None and u is not None
                ]
                h = -float(torch.stack(dots).sum()) if dots else 0.0  # one device sync per group
                group["lr"] = max(float(group["lr"]) - self.beta * h, self.floors[j])
        self._before = [
            [p.detach().clone() if p.grad is not None else None for p in g["params"]] for g in optimizer.param_groups
        ]

    def _post_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._direction = [
            [None if w0 is None else (w0 - p.detach()) / float(g["lr"]) for p, w0 in zip(g["params"], before)]
            for g, before in zip(optimizer.param_groups, self._before)
        ]
        self._before = []

    def remove(self) -> None:
        """Remove the optimizer hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


class Hypergradient(FineTuningStrategy):
    """``hypergradient``: every group trains with the bundle's optimizer (Adam), each group's LR learned online
    by :class:`HypergradientDescent` (Baydin et al., ICLR 2018), starting from groups ``lr``, head ``head_lr``.

    :meth:`attach` (run by ``StrategyHandler`` at attach time) puts the hooks on ``engine.optimizer`` at
    ``Events.STARTED``, and logs the groups' LRs at every ``EPOCH_COMPLETED``.

    Args:
        beta: the hypergradient learning rate (1e-7, the paper's value for Adam).
        min_lr_factor: floor of every group's LR, as a fraction of its initial LR.
    """

    name = "hypergradient"

    def check_options(self, beta: float = 1e-7, min_lr_factor: float = 1e-3) -> dict[str, Any]:
        _check_positive(self.name, "beta", beta)
        _check_positive(self.name, "min_lr_factor", min_lr_factor)
        return {"beta": float(beta), "min_lr_factor": float(min_lr_factor)}

    def setup(self) -> None:
        self.hd: HypergradientDescent | None = None  # built on the trainer's optimizer when training starts

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _started(self, engine: Engine) -> None:
        if self.hd is None or self.hd.optimizer is not engine.optimizer:
            if self.hd is not None:
                self.hd.remove()
            self.hd = HypergradientDescent(engine.optimizer, self.beta, self.min_lr_factor)

    def _log(self, engine: Engine) -> None:
        lrs = {g.get("name", str(j)): float(g["lr"]) for j, g in enumerate(engine.optimizer.param_groups)}
        engine.state.hypergradient_lrs = lrs
        logger.info(
            f"strategy {self.name}: epoch {engine.state.epoch}: lr " + ", ".join(f"{k}={v:.3g}" for k, v in lrs.items())
        )


_REGISTRY: dict[str, type[FineTuningStrategy]] = {
    cls.name: cls
    for cls in (
        LastLayer,
        AllLayers,
        LayerDecay,
        Bidirectional,
        L2SP,
        LPFT,
        MetaLRStrategy,
        Prodigy,
        DAdaptation,
        ScheduleFree,
        Hypergradient,
    )
}

#: names accepted by :func:`make_strategy`
STRATEGIES: tuple[str, ...] = tuple(_REGISTRY)



def make_strategy(
    name: str,
    network: nn.Module,
    lr: float,
    head_lr: float | None = None,
    groups: GroupsSpec = "auto",
    **kwargs: Any,
) -> FineTuningStrategy:
    """Build the fine-tuning strategy ``name`` for ``network`` (one config key selects it).

    Args:
        name: one of :data:`STRATEGIES`: ``last_layer``, ``all_layers``, ``layer_decay``, ``bidirectional``,
            ``l2sp``, ``lpft``, ``metalr``, ``prodigy``, ``dadaptation``, ``schedulefree``,
            ``hypergradient``.
        network: the pre-trained network (wrappers are seen through).
        lr: learning rate of the non-head groups.
        head_lr: learning rate of the head (last layer group); ``None`` means ``lr``.
        groups: layer groups, as for :func:`monai_metalr.layer_groups`.
        kwargs: the strategy's own arguments (``separate_head``; ``decay``; ``epochs_per_stage``,
            ``directions``; ``alpha``, ``beta``; ``probe_epochs``; ``lr_scale``, ``optimizer_kwargs``; ``beta``,
            ``min_lr_factor``).

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or a bad argument value.
        TypeError: an argument the strategy does not take (the message names the strategy and the argument).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown fine-tuning strategy {name!r}; choose one of {list(STRATEGIES)}")
    cls = _REGISTRY[name]
    accepted = [p for p in inspect.signature(cls.check_options).parameters if p != "self"]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise TypeError(
            f"strategy {name!r} got unexpected argument(s) {unknown}; "
            + (f"it takes {accepted}" if accepted else "it takes no arguments besides lr, head_lr and groups")
        )
    return cls(network, lr, head_lr=head_lr, groups=groups, **kwargs)


def __getattr__(name: str):
    # names that moved out of this module (deprecated paths)
    from ._moved import moved_name

    return moved_name('monai_metalr.strategies', name)
