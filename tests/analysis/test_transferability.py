"""Per-layer transferability (Chen et al. 2022), Spearman correlation with learned LRs, outputs and the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from small_nets import SmallNet

from monai_metalr import layer_groups
from monai_metalr.analysis.lr_curves import write_lr_csv
from monai_metalr.analysis.transferability import (
    lr_transferability_correlation,
    main,
    mean_learned_lrs,
    plot_transferability,
    spearman,
    transferability,
    write_transferability_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = {"a": ["w1", "w2"], "b": ["w3"], "head": ["h"]}


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _weights() -> tuple[dict, dict, dict]:
    random_init = {"w1": _t(0, 0), "w2": _t(0), "w3": _t(2, 2), "h": _t(3)}
    pretrained = {"w1": _t(1, 1), "w2": _t(3), "w3": _t(1, -1), "h": _t(0)}
    finetuned = {"w1": _t(1, 2), "w2": _t(3), "w3": _t(0, 0), "h": _t(1)}
    return random_init, pretrained, finetuned


def test_transferability_matches_hand_computation():
    r, p, f = _weights()
    # group a, elements of w1 then w2 (concatenated, so each element weighs the same):
    #   D(random, ft)     = (|0-1| + |0-2| + |0-3|) / 3 = 6/3 = 2
    #   D(pretrained, ft) = (|1-1| + |1-2| + |3-3|) / 3 = 1/3        -> T_a = 2 / (1/3) = 6
    #   (a mean of per-tensor means would give 2.25 / 0.25 = 9 instead)
    # group b: D(r, f) = (2 + 2) / 2 = 2, D(p, f) = (1 + 1) / 2 = 1   -> T_b = 2
    # head:    D(r, f) = |3 - 1| = 2,     D(p, f) = |0 - 1| = 1       -> T_head = 2 (excluded from the mean)
    # mean over a and b = (6 + 2) / 2 = 4 (with the head it would be 10/3)
    t = transferability(r, p, f, GROUPS)
    assert list(t) == ["a", "b", "head", "mean"]
    assert t["a"] == pytest.approx(6.0)
    assert t["b"] == pytest.approx(2.0)
    assert t["head"] == pytest.approx(2.0)
    assert t["mean"] == pytest.approx(4.0)
    # excluding nothing averages all three; an unknown name in exclude is ignored
    assert transferability(r, p, f, GROUPS, exclude=("nope",))["mean"] == pytest.approx(10 / 3)


def test_wrapper_prefixes_and_modules_are_accepted():
    r, p, f = _weights()
    wrapped = {f"module._orig_mod.{k}": v for k, v in p.items()}
    assert transferability(r, wrapped, f, GROUPS)["a"] == pytest.approx(6.0)

    torch.manual_seed(0)
    nets = [SmallNet() for _ in range(3)]
    groups = layer_groups(nets[0])
    t_modules = transferability(nets[0], torch.nn.DataParallel(nets[1]), nets[2], groups)
    # stem by hand: its three parameter tensors flattened and concatenated
    names = groups["stem"]
    flat = [torch.cat([dict(n.named_parameters())[k].detach().flatten() for k in names]) for n in nets]
    expected = (flat[0] - flat[2]).abs().mean() / (flat[1] - flat[2]).abs().mean()
    assert t_modules["stem"] == pytest.approx(float(expected), rel=1e-6)
    assert list(t_modules) == ["stem", "body", "head", "mean"]
    assert t_modules["mean"] == pytest.approx((t_modules["stem"] + t_modules["body"]) / 2)


def test_frozen_group_is_inf_and_left_out_of_the_mean(caplog):
    r, p, f = _weights()
    f = {**f, "w3": p["w3"].clone()}  # group b did not move in fine-tuning
    with caplog.at_level("WARNING", logger="monai_metalr"):
        t = transferability(r, p, f, GROUPS)
    assert math.isinf(t["b"]) and t["b"] > 0
    assert t["mean"] == pytest.approx(6.0)  # only group a is left
    assert "['b']" in caplog.text and "inf" in caplog.text


def test_errors_name_the_weight_set_or_parameter():
    r, p, f = _weights()
    with pytest.raises(ValueError, match=r"'w3' of group 'b' is missing from pretrained"):
        transferability(r, {k: v for k, v in p.items() if k != "w3"}, f, GROUPS)
    with pytest.raises(ValueError, match=r"missing from finetuned"):
        transferability(r, p, {k: v for k, v in f.items() if k != "w1"}, GROUPS)
    with pytest.raises(
        ValueError, match=r"'w1' of group 'a' has different shapes: random_init \[3\], pretrained \[2\]"
    ):
        transferability({**r, "w1": _t(0, 0, 0)}, p, f, GROUPS)
    with pytest.raises(ValueError, match="leaves no group"):
        transferability(r, p, f, GROUPS, exclude=("a", "b", "head"))
    # an excluded head of another size (other number of classes) is not compared: nan, not an error
    t = transferability(r, {**p, "h": _t(0, 0)}, f, GROUPS)
    assert math.isnan(t["head"]) and t["mean"] == pytest.approx(4.0)


def test_spearman_with_ties_by_hand():
    x = [1, 2, 2, 3, 4]
    y = [2, 1, 4, 3, 5]
    # average ranks: x -> 1, 2.5, 2.5, 4, 5; y -> 2, 1, 4, 3, 5; both mean 3
    # deviations: x -2, -.5, -.5, 1, 2; y -1, -2, 1, 0, 2
    # sum dx*dy = 2 + 1 - .5 + 0 + 4 = 6.5; sum dx^2 = 9.5; sum dy^2 = 10
    assert spearman(x, y) == pytest.approx(6.5 / math.sqrt(95))
    # without ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="at least 3"):
        spearman([1, 2], [2, 1])
    with pytest.raises(ValueError, match="x has 3 values, y has 4"):
        spearman([1, 2, 3], [1, 2, 3, 4])


def test_spearman_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 5, (12,), generator=g).tolist()  # many ties
        y = torch.randn(12, generator=g).tolist()
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def _write_lrs(path, names, lrs_per_step):
    steps = len(lrs_per_step)
    history = {
        "step": torch.arange(1, steps + 1),
        "meta_loss": torch.linspace(1.0, 0.5, steps, dtype=torch.float64),
        "skipped": torch.zeros(steps, dtype=torch.bool),
        "lr": torch.tensor(lrs_per_step, dtype=torch.float64),
        "hypergrad": torch.zeros(steps, len(names), dtype=torch.float64),
    }
    return write_lr_csv(history, names, path)


def test_lr_transferability_correlation_by_hand(tmp_path):
    names = ["g1", "g2", "g3", "g4", "g5"]
    csv_path = _write_lrs(
        tmp_path / "metalr_lr.csv", names, [[1e-3, 1e-4, 5e-4, 1e-2, 1e-5], [3e-3, 1e-4, 7e-4, 3e-2, 1e-5]]
    )
    t = {"g1": 5.0, "g2": 9.0, "g3": 10.0, "g4": 1.0, "g5": math.inf, "other": 3.0, "mean": 6.0}
    out = lr_transferability_correlation(csv_path, t)
    # g5 (inf), "other" (not in the CSV) and "mean" are left out
    assert out["groups"] == ["g1", "g2", "g3", "g4"]
    assert out["mean_lr"] == pytest.approx([2e-3, 1e-4, 6e-4, 2e-2])
    assert out["transferability"] == [5.0, 9.0, 10.0, 1.0]
    # LR ranks g1..g4: 3, 1, 2, 4; T ranks: 2, 3, 4, 1; d = 1, -2, -2, 3; sum d^2 = 18
    # rho = 1 - 6 * 18 / (4 * 15) = -0.8
    assert out["spearman"] == pytest.approx(-0.8)
    assert list(mean_learned_lrs(csv_path)) == names
    with pytest.raises(ValueError, match=r"metalr_lr\.csv.*at least 3"):
        lr_transferability_correlation(csv_path, {"g1": 1.0, "g2": 2.0, "g5": math.inf})


def test_csv_and_png_outputs(tmp_path):
    t = {"stem": 3.5, "layer1": math.inf, "head": math.nan, "mean": 3.5}
    path = write_transferability_csv(t, tmp_path / "t.csv", mean_lrs={"stem": 1e-4, "head": 1e-2})
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["group", "transferability", "mean_lr"]
    assert [r[0] for r in rows[1:]] == ["stem", "layer1", "head", "mean"]
    assert float(rows[1][1]) == 3.5 and float(rows[1][2]) == 1e-4
    assert math.isinf(float(rows[2][1])) and rows[2][2] == ""
    assert math.isnan(float(rows[3][1]))
    with open(write_transferability_csv(t, tmp_path / "plain.csv"), newline="") as f:
        assert next(csv.reader(f)) == ["group", "transferability"]

    for lrs in (None, {"stem": 1e-4, "layer1": 1e-3, "head": 1e-2}):
        png = plot_transferability(t, tmp_path / f"t_{lrs is None}.png", mean_lrs=lrs)
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.csv", "t.csv", "t_False.png", "t_True.png"]


@pytest.mark.slow
def test_cli_end_to_end_with_resnet18(tmp_path, capsys):
    from monai_metalr.networks import get_classifier

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return get_classifier("resnet18", num_classes=3, in_channels=3, pretrained=None)

    pretrained = build(1).state_dict()
    groups = layer_groups(build(2))
    finetuned = {k: v.clone() for k, v in pretrained.items()}
    g = torch.Generator().manual_seed(3)
    for j, (name, params) in enumerate(groups.items()):
        if name == "layer1.0":
            continue  # frozen: T = inf
        for p in params:
            finetuned[p] += 0.001 * (j + 1) * torch.randn(finetuned[p].shape, generator=g)
    torch.save({"state_dict": {f"module.{k}": v for k, v in pretrained.items()}, "epoch": 3}, tmp_path / "p.pt")
    torch.save(finetuned, tmp_path / "f.pt")
    names = list(groups)
    lrs = [[1e-4 * (1 + j) * (1 + s) for j in range(len(names))] for s in range(3)]
    lrs[0][2] = 5e-2  # break the monotone pattern for one group
    lr_csv = _write_lrs(tmp_path / "metalr_lr.csv", names, lrs)

    out_dir = tmp_path / "out"
    argv = ["--random_init", "seed:7", "--pretrained", str(tmp_path / "p.pt"), "--finetuned", str(tmp_path / "f.pt")]
    argv += ["--network", "resnet18", "--num_classes", "3", "--lr_csv", str(lr_csv), "--out_dir", str(out_dir)]
    result = main(argv)
    t = result["transferability"]
    assert list(t) == names + ["mean"]
    assert math.isinf(t["layer1.0"])

    # the stem by hand, against the network seed:7 builds
    random_init = build(7).state_dict()
    cat = [torch.cat([sd[k].double().flatten() for k in groups["stem"]]) for sd in (random_init, pretrained, finetuned)]
    expected = (cat[0] - cat[2]).abs().mean() / (cat[1] - cat[2]).abs().mean()
    assert t["stem"] == pytest.approx(float(expected), rel=1e-9)
    # the head (last group) is excluded by default, frozen layer1.0 is inf: the mean is over the rest
    rest = [t[n] for n in names[:-1] if n != "layer1.0"]
    assert t["mean"] == pytest.approx(sum(rest) / len(rest))

    with open(out_dir / "transferability.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == names + ["mean"]
    assert float(rows[0]["transferability"]) == pytest.approx(t["stem"])
    assert float(rows[0]["mean_lr"]) == pytest.approx(sum(lrs[s][0] for s in range(3)) / 3)
    assert (out_dir / "transferability.png").read_bytes()[:8] == PNG_MAGIC
    corr = json.loads((out_dir / "lr_vs_transferability.json").read_text())
    assert "layer1.0" not in corr["groups"] and len(corr["groups"]) == len(names) - 1
    mean_lr = [sum(lrs[s][names.index(n)] for s in range(3)) / 3 for n in corr["groups"]]
    assert corr["mean_lr"] == pytest.approx(mean_lr)
    stats = pytest.importorskip("scipy.stats")
    assert corr["spearman"] == pytest.approx(stats.spearmanr(mean_lr, [t[n] for n in corr["groups"]]).statistic)
    assert "stem" in capsys.readouterr().out

    # same inputs, random init from a file: the seed's weights saved give the same numbers
    torch.save(random_init, tmp_path / "r.pt")
    argv2 = ["--random_init", str(tmp_path / "r.pt")] + argv[2:8] + ["--out_dir", str(tmp_path / "out2")]
    again = main(argv2)["transferability"]
    assert again["stem"] == pytest.approx(t["stem"]) and again["mean"] == pytest.approx(t["mean"])
    assert not (tmp_path / "out2" / "lr_vs_transferability.json").exists()


def test_cli_errors_name_the_input(tmp_path):
    base = ["--pretrained", str(tmp_path / "nope.pt"), "--finetuned", str(tmp_path / "nope.pt")]
    base += ["--network", "resnet18", "--out_dir", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"nope\.pt: no such checkpoint"):
        main(["--random_init", "seed:0"] + base)
    with pytest.raises(ValueError, match="seed:<integer>"):
        main(["--random_init", "seed:x"] + base)
    with pytest.raises(ValueError, match="unknown --network 'vgg'"):
        main(["--random_init", "seed:0"] + base[:4] + ["--network", "vgg", "--out_dir", str(tmp_path / "o")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        main(["--random_init", "seed:0", "--pretrained", str(tmp_path / "junk.pt")] + base[2:])
