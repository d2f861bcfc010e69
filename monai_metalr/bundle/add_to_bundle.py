"""``python -m monai_metalr add_to_bundle --bundle_root DIR``: MetaLR as an override file for a MONAI bundle.

The bundle is read, not edited. :func:`plan_override` finds, in the bundle's ``train.json``, the
``SupervisedTrainer`` and through its references the network, the optimizer, the training handlers, the training
loader and (through the ``ValidationHandler``) the validation cases, and writes the keys that add MetaLR, in the
merge syntax of MONAI's ``ConfigParser.load_config_files`` (``"+key"`` extends a list or dict, ``"a#b"`` sets one
entry), so the bundle runs with ``--config_file "['configs/train.json','configs/metalr.json']"``:

- the optimizer keeps its type and LR; only its ``params`` become one param group per layer group
  (:func:`monai_metalr.param_groups`);
- meta batches are random crops of the validation cases made by the training preprocessing
  (:func:`monai_metalr.data.meta_loader`): the meta forward calls the network as the trainer does, never the
  evaluator's sliding-window inferer;
- the :class:`~monai_metalr.MetaLRHandler` goes *first* in the trainer's handlers, on every rank: the model zoo's
  multi-GPU configs drop the last handlers on ranks > 0 (``@train#handlers[: -2 if dist.get_rank() > 0 else None]``),
  and a rank without MetaLR would leave the others waiting in its all-reduce. That slicing expression is kept and
  wrapped in a second, multi-GPU override;
- the bundle's LR scheduler, amp and logging stay; MetaLR's per-group LRs are added to the ``state_attributes`` of
  its ``StatsHandler`` / ``TensorBoardStatsHandler`` / ``MLFlowHandler``; MetaLR's state joins every checkpoint that
  also holds the optimizer (a resume checkpoint); model-only files (the best model) are left as they are.

Anything it cannot handle (no trainer, an optimizer built by an expression, MetaLR already there, ...) is a
:class:`BundleError` that says what and where, and nothing is written.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.utils import merge_kv

from ..io import atomic_path

__all__ = ["BundleError", "BundleOverride", "add_to_bundle", "plan_override"]

HANDLER_KEY = "metalr"
META_LOADER_KEY = "metalr_meta_loader"
_REF = re.compile(r"^@([A-Za-z0-9_#:]+)$")
_LOGGERS = ("StatsHandler", "TensorBoardStatsHandler", "MLFlowHandler")
# datasets whose items are transform(datalist entry): the meta loader makes its items the same way
_ITEM_DATASETS = frozenset(
    {"Dataset", "CacheDataset", "PersistentDataset", "SmartCacheDataset", "LMDBDataset", "CacheNTransDataset"}
)
# "$@network.parameters()", optionally filtered to the trainable ones: what param_groups replaces exactly
_ALL_PARAMETERS = re.compile(
    r"^\$\s*(filter\(\s*lambda\s+(\w+)\s*:\s*\2\.requires_grad\s*,\s*)?@[\w#:]+\.parameters\(\)\s*(?(1)\))\s*$"
)


class BundleError(ValueError):
    """The bundle does something :func:`plan_override` cannot handle; the message says what and where."""


@dataclass
class BundleOverride:
    """What :func:`plan_override` found and would write.

    Attributes:
        override: the keys of ``configs/metalr.json``.
        multi_gpu_override: the keys of ``configs/metalr_multi_gpu.json`` (composed after the bundle's multi-GPU
            config), or ``None`` when the bundle has no multi-GPU config or it does not set the trainer's handlers.
        notes: what was kept, changed or left alone, one line each, for the user.
        groups: ``(group name, share of the trainable parameters)`` from ``layer_groups(network, "auto")``, when
            the network could be built to look at it (empty otherwise; see ``notes``).
    """

    override: dict[str, Any]
    multi_gpu_override: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    groups: list[tuple[str, float]] = field(default_factory=list)


def _ref(value: Any) -> str | None:
    """The id that ``value`` references (``"@a#b"`` -> ``"a#b"``), else ``None``."""
    if isinstance(value, str):
        match = _REF.match(value.strip())
        if match:
            return match.group(1).replace("::", "#")
    return None


def _target_name(item: Any) -> str:
    """The class name of a component config (``"monai.handlers.StatsHandler"`` -> ``"StatsHandler"``)."""
    if isinstance(item, Mapping) and isinstance(item.get("_target_"), str):
        return item["_target_"].split(".")[-1]
    return ""


class _Bundle:
    """A bundle config with macros and relative ids resolved, read by id, every error naming the file."""

    def __init__(self, files: Sequence[Path], shown: str) -> None:
        self.shown = shown
        config = ConfigParser.load_config_files([str(f) for f in files])
        self.raw = ConfigParser(json.loads(json.dumps(config)))  # as written: values copied into the override
        self.parser = ConfigParser(config)
        self.parser.resolve_macro_and_relative_ids()  # absolute ids: references can be followed

    def get(self, id: str) -> Any:
        return self.parser.get(id) if id in self.parser else None

    def fail(self, what: str) -> BundleError:
        return BundleError(f"{self.shown}: {what}; nothing was written")

    def component(self, owner: str, key: str, kind: str) -> tuple[str, Any]:
        """``(id, config)`` of what ``owner#key`` holds: a reference is followed, an inline config has its own id."""
        value = self.get(f"{owner}#{key}")
        if value is None:
            raise self.fail(f"{owner!r} has no {key!r} ({kind})")
        return self.follow(f"{owner}#{key}", value)

    def follow(self, at: str, value: Any) -> tuple[str, Any]:
        """``(id, config)`` at the end of a chain of references starting with ``value`` (found at id ``at``)."""
        for _ in range(16):
            target = _ref(value)
            if target is None:
                return at, value
            if target not in self.parser:
                raise self.fail(f"{at} references @{target}, which the config does not define")
            at, value = target, self.get(target)
        raise self.fail(f"{at}: a chain of more than 16 references")

    def items(self, list_id: str, entries: list) -> list[tuple[str, Any]]:
        """``(id, config)`` of each entry of the list at ``list_id``, references followed (``"@stats"`` -> its id)."""
        return [self.follow(f"{list_id}#{i}", entry) for i, entry in enumerate(entries)]

    def find(self, class_name: str, prefer: str) -> str:
        """The id of the one component whose ``_target_`` is ``class_name`` (``prefer`` first)."""
        if _target_name(self.get(prefer)) == class_name:
            return prefer
        found = self.find_all(class_name)
        if len(found) != 1:
            where = f"at {found}" if found else "anywhere"
            raise self.fail(f"expected one {class_name}, found {len(found)} {where}")
        return found[0]

    def find_all(self, class_name: str) -> list[str]:
        """The ids of every component whose ``_target_`` is ``class_name``."""
        found: list[str] = []

        def walk(node: Any, path: str) -> None:
            if _target_name(node) == class_name:
                found.append(path)
            if isinstance(node, Mapping):
                for k, v in node.items():
                    walk(v, f"{path}#{k}" if path else str(k))
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{path}#{i}")

        walk(self.parser.get(), "")
        return found


def _handler_list(bundle: _Bundle, trainer_id: str) -> tuple[str | None, Any, list]:
    """``(id of the handler list, the trainer's train_handlers value, the handlers)``; the id is ``None`` when
    ``train_handlers`` is an expression (e.g. a slice of a list: then the list it slices is searched for)."""
    value = bundle.get(f"{trainer_id}#train_handlers")
    if value is None:
        return None, None, []
    written = bundle.raw.get(f"{trainer_id}#train_handlers")  # what the override wraps: the bundle's own text
    if isinstance(written, str) and written.startswith("%"):  # a macro only works as a whole value
        raise bundle.fail(
            f"{trainer_id}#train_handlers is the macro {written!r}; write it as a reference "
            f"({'@' + written[1:]!r}) or list the handlers, then run add_to_bundle again"
        )
    target = _ref(value)
    if target is not None:
        return target, written, list(bundle.get(target) or [])
    if isinstance(value, list):
        return f"{trainer_id}#train_handlers", written, value
    if isinstance(value, str) and value.startswith("$"):
        refs = [r.replace("::", "#") for r in re.findall(r"@([A-Za-z0-9_#:]+)", value)]
        lists = [r for r in refs if isinstance(bundle.get(r), list)]
        if len(lists) == 1:
            return lists[0], written, list(bundle.get(lists[0]))
    raise bundle.fail(f"{trainer_id}#train_handlers is {value!r}: not a list, a reference to one or an expression on one")


def _prepend_handler(value: Any) -> Any:
    """The trainer's ``train_handlers`` with ``@metalr`` first: a reference or an expression is wrapped."""
    if value is None:
        return [f"@{HANDLER_KEY}"]
    if isinstance(value, str) and value.startswith("$"):  # an expression may give None (no handlers on a rank)
        return f"$[@{HANDLER_KEY}] + list(({value[1:]}) or [])"
    if isinstance(value, str):
        return f"$[@{HANDLER_KEY}] + list({value})"
    return None  # an inline list: extended with "+" instead


def _state_attributes(existing: Any, optimizer_id: str) -> str:
    """A ``state_attributes`` expression: the handler's own attributes, then MetaLR's per-group LR names (the
    optimizer's param group names, known when the config is parsed)."""
    ours = f"['metalr_lr_' + g['name'] for g in @{optimizer_id}.param_groups]"
    if existing is None:
        return f"${ours}"
    if isinstance(existing, str):
        inner = existing.removeprefix("$")
        return f"$list({inner}) + {ours}"
    return f"${json.dumps(list(existing))} + {ours}"


def _checkpoint_edits(
    bundle: _Bundle, items: list[tuple[str, Any]], optimizer_id: str, trainer_id: str, notes: list[str]
) -> dict[str, Any]:
    """``"+<saver>#save_dict"`` / ``"+<loader>#load_dict"`` entries adding MetaLR where the optimizer is saved."""
    edits: dict[str, Any] = {}
    for handler_id, handler in items:
        key = {"CheckpointSaver": "save_dict", "CheckpointLoader": "load_dict"}.get(_target_name(handler))
        if key is None:
            continue
        # the dict itself may be a reference ("save_dict": "@resume_dict"): extend it where it is defined
        dict_id, entries = bundle.follow(f"{handler_id}#{key}", handler.get(key) or {})
        saved = {bundle.follow(dict_id, v)[0] for v in entries.values() if _ref(v)} if isinstance(entries, Mapping) else set()
        if saved & {optimizer_id, trainer_id}:
            edits[f"+{dict_id}"] = {HANDLER_KEY: f"@{HANDLER_KEY}"}
            notes.append(f"checkpoint: MetaLR's state added to the {_target_name(handler)} at {handler_id} ({key})")
            if key == "load_dict":
                notes.append(
                    f"checkpoint: the loader at {handler_id} now expects MetaLR's state too: a checkpoint written "
                    "without MetaLR resumes without configs/metalr.json only"
                )
        else:
            notes.append(
                f"checkpoint: the {_target_name(handler)} at {handler_id} holds no optimizer (a model file): left as it is"
            )
    return edits


def _preview_groups(bundle: _Bundle, network_id: str, notes: list[str]) -> list[tuple[str, float]]:
    """The layer groups of the bundle's network, if it can be built here (no download, no GPU needed)."""
    from ..groups import layer_groups, unwrap_model

    try:
        net = bundle.parser.get_parsed_content(network_id)
        named = dict(unwrap_model(net).named_parameters())
        spec = layer_groups(net, "auto")
    except Exception as e:  # a network that needs a GPU, a download or a distributed run to be built
        notes.append(f"groups: the network (@{network_id}) could not be built here to show its layer groups ({e})")
        return []
    total = sum(named[n].numel() for names in spec.values() for n in names) or 1
    return [(g, sum(named[n].numel() for n in names) / total) for g, names in spec.items()]


def plan_override(
    bundle_root: str | Path,
    config_file: str = "configs/train.json",
    multi_gpu_config: str | None = "configs/multi_gpu_train.json",
    meta_data: str | None = None,
    preview: bool = True,
) -> BundleOverride:
    """Read a bundle and work out the MetaLR override; writes nothing.

    Args:
        bundle_root: the bundle's folder.
        config_file: its training config, relative to ``bundle_root``.
        multi_gpu_config: its multi-GPU config (composed after ``config_file``), relative to ``bundle_root``;
            skipped when the file does not exist or when ``None``.
        meta_data: a config expression or reference for the held-out cases of the meta batches (e.g. ``"@meta_cases"``
            or ``"$@datalist[-20:-10]"``); default: the validation dataset's ``data``.
        preview: build the network to list its layer groups.

    Raises:
        BundleError: the bundle does something this cannot handle (the message names the file and the id).
    """
    root = Path(bundle_root)
    train_file = root / config_file
    if not train_file.is_file():
        others = sorted(p.name for p in train_file.parent.glob(f"{train_file.stem}.*")) if train_file.parent.is_dir() else []
        hint = f" (there is {', '.join(others)}: pass --config_file)" if others else ""
        raise BundleError(f"{train_file}: no such training config{hint}; nothing was written")
    multi_gpu_config = _same_format(multi_gpu_config, config_file)
    try:
        bundle = _Bundle([train_file], str(train_file))
    except (ValueError, OSError) as e:
        raise BundleError(f"{train_file}: cannot be read as a MONAI bundle config ({e}); nothing was written") from e
    notes: list[str] = []
    existing = bundle.find_all("MetaLRHandler")
    if existing:
        raise bundle.fail(f"MetaLR is already configured (MetaLRHandler at {existing})")

    trainer_id = bundle.find("SupervisedTrainer", prefer="train#trainer")
    network_id, _ = bundle.component(trainer_id, "network", "the network")
    optimizer_id, optimizer = bundle.component(trainer_id, "optimizer", "the optimizer")
    if not isinstance(optimizer, Mapping) or "_target_" not in optimizer:
        raise bundle.fail(f"the optimizer at {optimizer_id!r} is {optimizer!r}, not a component with a _target_")
    params = optimizer.get("params")
    if not (isinstance(params, str) and _ALL_PARAMETERS.match(params) and _of_network(bundle, params, network_id)):
        raise bundle.fail(
            f"{optimizer_id}#params is {params!r}; MetaLR replaces it by one param group per layer group and only "
            "does so for the network's .parameters() (param groups made by hand: build them with "
            "monai_metalr.param_groups and add the handler yourself, see docs/bundle_integration.md)"
        )
    lr = f"@{optimizer_id}#lr" if "lr" in optimizer else "None"
    imports = ["$import monai_metalr", "$import monai_metalr.bundle.run"]
    override: dict[str, Any] = {
        ("+imports" if isinstance(bundle.get("imports"), list) else "imports"): imports,
        f"{optimizer_id}#params": f"$monai_metalr.param_groups(@{network_id}, {lr})",
    }
    notes.append(
        f"optimizer: {optimizer['_target_']} at {optimizer_id!r} kept with its LR; its params are now one param "
        "group per layer group (monai_metalr.param_groups), each learning its own multiplier"
    )

    # meta batches: the training preprocessing applied to the held-out cases
    loader_id, loader = bundle.component(trainer_id, "train_data_loader", "the training loader")
    dataset_id, dataset = bundle.component(loader_id, "dataset", "the training dataset")
    if not isinstance(dataset, Mapping) or "transform" not in dataset:
        raise bundle.fail(f"the training dataset at {dataset_id!r} has no 'transform' to make meta batches with")
    if _target_name(dataset) not in _ITEM_DATASETS:
        # e.g. a PatchWSIDataset: its items are made by the dataset itself, so the transform alone cannot make them
        raise bundle.fail(
            f"the training dataset at {dataset_id!r} is a {_target_name(dataset) or 'component without _target_'}, "
            f"not one of {sorted(_ITEM_DATASETS)} whose items are the datalist entries passed through 'transform'; "
            "build a meta loader of held-out patches yourself and add the handler by hand (docs/bundle_integration.md)"
        )
    transform = _ref(dataset["transform"]) or f"{dataset_id}#transform"
    handlers_id, handlers_value, handlers = _handler_list(bundle, trainer_id)
    train_items = bundle.items(handlers_id, handlers) if handlers_id else []
    if meta_data is None:
        meta_data, shown = _validation_cases(bundle, train_items)
        if bundle.raw.get(shown) == bundle.raw.get(f"{dataset_id}#data"):
            raise bundle.fail(
                f"the validation cases ({shown}) are written exactly as the training cases ({dataset_id}#data): "
                "meta batches must be held-out cases, never training cases; pass --meta_data with cases of their own"
            )
        notes.append(
            f"meta batches: random crops of the validation cases ({shown}) through @{transform}, shuffled. The best "
            "model is still chosen on these cases: for a clean selection hold out cases of their own and pass "
            "--meta_data"
        )
    else:
        notes.append(f"meta batches: {meta_data} through @{transform}, shuffled")
    override[META_LOADER_KEY] = {
        "_target_": "monai_metalr.data.meta_loader",
        "data": meta_data,
        "transform": f"@{transform}",
        "batch_size": f"@{loader_id}#batch_size" if "batch_size" in loader else 1,
        "num_workers": f"@{loader_id}#num_workers" if "num_workers" in loader else 0,
        # cache as much as training does: a bundle whose training set is not cached in memory has no room for it
        "cache_rate": f"@{dataset_id}#cache_rate" if "cache_rate" in dataset else (
            1.0 if _target_name(dataset) == "CacheDataset" else 0.0
        ),
    }
    handler: dict[str, Any] = {"_target_": "monai_metalr.MetaLRHandler", "meta_loader": f"@{META_LOADER_KEY}"}
    if "output_dir" in bundle.parser:
        handler["output_dir"] = "@output_dir"
    else:
        notes.append("outputs: the bundle has no 'output_dir': MetaLR writes no LR curves (set the handler's output_dir)")
    override[HANDLER_KEY] = handler
    # built in `initialize`, so that its arguments are checked before the trainer's datasets are cached (MONAI builds
    # a trainer's arguments in the order they are written, the training loader first); `run` reuses this instance.
    # The root-cause hook repeats the real error as the last line, below MONAI's 'Failed to instantiate' traceback.
    initialize = bundle.get("initialize")
    if initialize is None or isinstance(initialize, list):
        override["+initialize" if initialize is not None else "initialize"] = [
            "$monai_metalr.bundle.run.install_root_cause_hook()", f"$@{HANDLER_KEY}",
        ]
        notes.append("arguments: MetaLR is built in 'initialize', so its settings are checked before the training "
                     "data are cached; a failed run ends with its root cause as the last line")
    else:
        notes.append(f"arguments: 'initialize' is {initialize!r}, not a list: MetaLR's arguments are checked when the "
                     "trainer is built, after its datasets")

    # the handler first, on every rank
    prepended = _prepend_handler(handlers_value)
    if prepended is None:  # handlers listed inside the trainer: nothing refers to that list, so append
        override[f"+{trainer_id}#train_handlers"] = [f"@{HANDLER_KEY}"]
        notes.append(f"handler: MetaLRHandler appended to the list at {trainer_id}#train_handlers")
    else:
        override[f"{trainer_id}#train_handlers"] = prepended
        notes.append(f"handler: MetaLRHandler first in {trainer_id}#train_handlers (before anything a rank may drop)")
    for where, h in train_items:
        name = _target_name(h)
        if name in _LOGGERS:
            override[f"{where}#state_attributes"] = _state_attributes(h.get("state_attributes"), optimizer_id)
            notes.append(f"logging: per-group LRs added to the state_attributes of the {name} at {where}")
        elif name == "LrScheduleHandler":
            notes.append(
                f"schedule: the LrScheduleHandler at {where} is kept; every step uses its scheduled LR times "
                "MetaLR's multiplier, and the scheduler never sees the multipliers"
            )
    _, amp = bundle.follow(f"{trainer_id}#amp", bundle.get(f"{trainer_id}#amp"))
    if amp is True or (isinstance(amp, str) and amp.startswith("$")):
        notes.append("amp: kept; the meta step runs under the trainer's autocast and GradScaler")

    handler_items = train_items + _validation_handler_items(bundle, train_items)
    override.update(_checkpoint_edits(bundle, handler_items, optimizer_id, trainer_id, notes))

    plan = BundleOverride(override=override, notes=notes)
    plan.multi_gpu_override = _multi_gpu(root, config_file, multi_gpu_config, trainer_id, notes)
    _check_references(root, config_file, multi_gpu_config, plan)
    if preview:
        plan.groups = _preview_groups(bundle, network_id, notes)
    return plan


def _of_network(bundle: _Bundle, params: str, network_id: str) -> bool:
    """Whether ``params`` (``$@x.parameters()``) are the trainer's network's: ``x`` is its id, or an id its config
    refers to (``"network": "$@network_def.to(@device)"``)."""
    used = re.search(r"@([\w#:]+)\.parameters\(\)", params)
    if used is None:
        return False
    name = used.group(1).replace("::", "#")
    return name == network_id or f"@{name}" in json.dumps(bundle.raw.get(network_id)).replace("::", "#")


def _same_format(multi_gpu_config: str | None, config_file: str) -> str | None:
    """The default multi-GPU config in the training config's format (``multi_gpu_train.yaml`` beside ``train.yaml``)."""
    if multi_gpu_config is None:
        return None
    path, suffix = Path(multi_gpu_config), Path(config_file).suffix
    if path.name == "multi_gpu_train.json" and suffix != ".json":
        return str(path.with_suffix(suffix))
    return multi_gpu_config


def _validation_cases(bundle: _Bundle, items: list[tuple[str, Any]]) -> tuple[str, str]:
    """A reference to the validation dataset's ``data``, found through the trainer's ``ValidationHandler``."""
    for where, h in items:
        if _target_name(h) != "ValidationHandler":
            continue
        evaluator_id, _ = bundle.component(where, "validator", "the evaluator")
        loader_id, _ = bundle.component(evaluator_id, "val_data_loader", "the validation loader")
        dataset_id, dataset = bundle.component(loader_id, "dataset", "the validation dataset")
        if isinstance(dataset, Mapping) and "data" in dataset:
            return f"@{dataset_id}#data", f"{dataset_id}#data"
        raise bundle.fail(f"the validation dataset at {dataset_id!r} has no 'data'; pass --meta_data")
    raise bundle.fail("the trainer has no ValidationHandler to take held-out cases from; pass --meta_data")


def _validation_handler_items(bundle: _Bundle, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``(id, config)`` of the handlers of the evaluators the trainer validates with (for their checkpoints)."""
    out: list[tuple[str, Any]] = []
    for where, h in items:
        if _target_name(h) != "ValidationHandler":
            continue
        evaluator_id, _ = bundle.component(where, "validator", "the evaluator")
        value = bundle.get(f"{evaluator_id}#val_handlers")
        if value is None:
            continue
        list_id, entries = bundle.follow(f"{evaluator_id}#val_handlers", value)
        if isinstance(entries, list):
            out += bundle.items(list_id, entries)
    return out


def _multi_gpu(
    root: Path, config_file: str, multi_gpu_config: str | None, trainer_id: str, notes: list[str]
) -> dict[str, Any] | None:
    """The multi-GPU override: the multi-GPU config's own ``train_handlers`` expression, with MetaLR first."""
    if multi_gpu_config is None or not (root / multi_gpu_config).is_file():
        return None
    file = root / multi_gpu_config
    try:
        raw = ConfigParser.load_config_file(str(file))
    except (ValueError, OSError) as e:
        raise BundleError(f"{file}: cannot be read as a MONAI bundle config ({e}); nothing was written") from e
    key = next((k for k in raw if k.replace("::", "#") == f"{trainer_id}#train_handlers"), None)
    if key is None:
        notes.append(f"multi-GPU: {multi_gpu_config} keeps the trainer's handlers: configs/metalr.json serves it too")
        return None
    notes.append(
        f"multi-GPU: {multi_gpu_config} sets {key} to {raw[key]!r}; configs/metalr_multi_gpu.json keeps that with "
        "MetaLR first, so every rank runs the meta step"
    )
    return {f"{trainer_id}#train_handlers": _prepend_handler(raw[key])}


def _check_references(root: Path, config_file: str, multi_gpu_config: str | None, plan: BundleOverride) -> None:
    """Every id the override references must exist once the files are composed as the printed commands do."""
    for overrides in ([plan.override], [plan.override, plan.multi_gpu_override]):
        if overrides[-1] is None:
            continue
        files: list[Any] = [str(root / config_file)]
        if len(overrides) == 2 and multi_gpu_config:
            files.append(str(root / multi_gpu_config))
        merged = ConfigParser(ConfigParser.load_config_files(files))
        for override in overrides:
            for k, v in json.loads(json.dumps(override)).items():  # a copy: merging extends lists in place
                merge_kv(merged, k, v)
        text = json.dumps(overrides)
        for ref in sorted(set(re.findall(r"@([A-Za-z0-9_#:]+)", text))):
            if ref.startswith(("#", ":")):  # relative to the key it sits under, which the override keeps
                continue
            if ref.replace("::", "#") not in merged:
                raise BundleError(f"{root / config_file}: the override would reference @{ref}, which is not defined")


def add_to_bundle(
    bundle_root: str,
    config_file: str = "configs/train.json",
    multi_gpu_config: str = "configs/multi_gpu_train.json",
    output: str = "configs/metalr.json",
    meta_data: str | None = None,
    overwrite: bool = False,
    nproc_per_node: int = 2,
    preview: bool = True,
) -> dict[str, Path]:
    """Write ``configs/metalr.json`` (and ``configs/metalr_multi_gpu.json`` when the bundle's multi-GPU config needs
    it) for the bundle at ``bundle_root`` and print what changed and the commands that run it.

    Args:
        bundle_root: the bundle's folder.
        config_file, multi_gpu_config, meta_data: as for :func:`plan_override`.
        output: the override file to write, relative to ``bundle_root``; the multi-GPU one goes beside it.
        overwrite: replace existing override files.
        nproc_per_node: processes per node in the printed ``torchrun`` command.
        preview: build the network to print its layer groups (``False`` for a network that downloads weights or
            needs a GPU to be built).

    Returns:
        ``{"override": path, "multi_gpu_override": path}`` (the second only when written).

    Raises:
        BundleError: the bundle cannot be handled, or an override file exists and ``overwrite`` is false.
    """
    root = Path(bundle_root)
    overwrite = _as_bool("overwrite", overwrite)
    multi_gpu_config = _same_format(multi_gpu_config, config_file)
    plan = plan_override(root, config_file, multi_gpu_config, meta_data, preview=_as_bool("preview", preview))
    out = root / output
    multi_out = out.with_name(f"{out.stem}_multi_gpu{out.suffix}")
    targets = {"override": (out, plan.override)}
    if plan.multi_gpu_override is not None:
        targets["multi_gpu_override"] = (multi_out, plan.multi_gpu_override)
    for path, _ in targets.values():
        if path.exists() and not overwrite:
            raise BundleError(f"{path} exists; pass --overwrite True to replace it; nothing was written")
    for path, content in targets.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(content, indent=4) + "\n", encoding="utf-8")
    print(_summary(root, config_file, multi_gpu_config, {k: p for k, (p, _) in targets.items()}, plan, nproc_per_node))
    return {k: p for k, (p, _) in targets.items()}


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise BundleError(f"{name} must be True or False, got {value!r}")


def _summary(
    root: Path, config_file: str, multi_gpu_config: str, written: Mapping[str, Path], plan: BundleOverride, nproc: int
) -> str:
    rel = {k: str(p.relative_to(root)) for k, p in written.items()}
    lines = [f"wrote {', '.join(str(p) for p in written.values())}", ""]
    lines += [f"- {note}" for note in plan.notes]
    if plan.groups:
        lines += ["", f"layer groups ({len(plan.groups)}, share of the trainable parameters):"]
        lines += [f"  {name:<28} {share:6.1%}" for name, share in plan.groups]
    single = [config_file, rel["override"]]
    lines += ["", "train with MetaLR:", f"  cd {shlex.quote(str(root.resolve()))}", f"  {_run_command(single)}"]
    if (root / multi_gpu_config).is_file():
        multi = [config_file, multi_gpu_config, rel["override"]] + (
            [rel["multi_gpu_override"]] if "multi_gpu_override" in rel else []
        )
        torchrun = f"torchrun --standalone --nnodes=1 --nproc_per_node={nproc} -m"
        lines += ["on several GPUs:", f"  {_run_command(multi, torchrun)}"]
    return "\n".join(lines)


def _run_command(files: Sequence[str], launcher: str = "python -m") -> str:
    listed = ",".join(f"'{f}'" for f in files)
    return f'{launcher} monai.bundle run --config_file "[{listed}]"'
