"""The config snippet in docs/bundle_integration.md, merged into a small bundle config, trains for real."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_metalr.analysis import read_lr_csv

DOC = Path(__file__).resolve().parents[1] / "docs" / "bundle_integration.md"

BASE = {
    "imports": ["$import torch"],
    "output_dir": "",
    "device": "$torch.device('cpu')",
    "network": {"_target_": "monai.networks.nets.resnet10", "spatial_dims": 2, "n_input_channels": 1,
                "num_classes": 2},
    "loss": {"_target_": "torch.nn.CrossEntropyLoss"},
    "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 1e-3},
    "data": "$[{'image': torch.randn(1, 16, 16), 'label': torch.tensor(i % 2)} for i in range(12)]",
    "validate": {"dataloader": {"_target_": "DataLoader", "dataset": "@data", "batch_size": 4, "shuffle": True}},
    "train": {
        "dataloader": {"_target_": "DataLoader", "dataset": "@data", "batch_size": 4},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "trainer": {
            "_target_": "SupervisedTrainer",
            "device": "@device",
            "max_epochs": 2,
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "optimizer": "@optimizer",
            "loss_function": "@loss",
            "train_handlers": "@train#handlers",
        },
    },
}


def _snippet() -> dict:
    text = DOC.read_text()
    block = re.search(r"<!-- metalr-snippet:start -->\s*```json\n(.*?)```", text, re.S)
    assert block, f"{DOC} lost its marked snippet"
    return json.loads(block.group(1))


def test_documented_snippet_trains_inside_a_bundle(tmp_path):
    config = json.loads(json.dumps(BASE))
    config["output_dir"] = str(tmp_path)
    for key, value in _snippet().items():
        if key.endswith("+"):
            parent, child = key[:-1].split("#")
            config[parent][child] += value
        elif key == "imports":
            config["imports"] += value
        else:
            config[key] = value
    parser = ConfigParser(config)
    torch.manual_seed(0)
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    handler = parser.get_parsed_content("metalr")
    assert handler.meta.group_names[0] == "stem" and handler.meta.group_names[-1] == "head"
    assert len(trainer.optimizer.param_groups) == len(handler.meta.group_names) == 6
    history, groups = read_lr_csv(tmp_path / "metalr_lr.csv")
    assert groups == handler.meta.group_names and len(history["step"]) == 6
    assert (tmp_path / "metalr_lr.png").stat().st_size > 0
