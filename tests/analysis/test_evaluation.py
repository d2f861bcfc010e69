"""Calibration, subgroup metrics, OOD evaluation of predictions.csv and data-efficiency subsets."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from monai_metalr.analysis.calibration import expected_calibration_error, plot_reliability_diagram, reliability_bins
from monai_metalr.analysis.data_efficiency import plot_data_efficiency
from monai_metalr.analysis.evaluation import main
from monai_metalr.analysis.predictions import evaluate_predictions, read_predictions
from monai_metalr.analysis.subgroups import subgroup_metrics
from monai_metalr.data.subsets import data_efficiency_subsets
from monai_metalr.handlers import PredictionWriter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# four predictions, two classes
PROBS = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]]
LABELS = [0, 1, 1, 0]


def test_ece_by_hand_and_its_bin_dependence():
    # confidence / prediction / correct: 0.9 / 0 / yes, 0.6 / 0 / no, 0.7 / 1 / yes, 0.5 / 0 (argmax of a tie) / yes
    # 5 bins (i/5, (i+1)/5]: 0.5 and 0.6 in bin 2 (0.4, 0.6], 0.7 in bin 3, 0.9 in bin 4
    #   bin 2: acc 1/2, conf (0.5 + 0.6)/2 = 0.55 -> 2/4 * 0.05 = 0.025
    #   bin 3: acc 1,   conf 0.7               -> 1/4 * 0.3  = 0.075
    #   bin 4: acc 1,   conf 0.9               -> 1/4 * 0.1  = 0.025      ECE = 0.125
    bins = reliability_bins(PROBS, LABELS, num_bins=5)
    assert bins["count"] == [0, 0, 2, 1, 1]
    assert bins["accuracy"][2:] == pytest.approx([0.5, 1.0, 1.0])
    assert bins["confidence"][2:] == pytest.approx([0.55, 0.7, 0.9])
    assert math.isnan(bins["accuracy"][0]) and math.isnan(bins["confidence"][1])
    assert bins["edges"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert expected_calibration_error(PROBS, LABELS, num_bins=5) == pytest.approx(0.125)
    # 2 bins (0, .5], (.5, 1]: bin 0 holds 0.5 (acc 1, conf .5)  -> 1/4 * 0.5 = 0.125
    #   bin 1 holds 0.9, 0.6, 0.7 (acc 2/3, conf 2.2/3)           -> 3/4 * |2/3 - 2.2/3| = 0.05   ECE = 0.175
    assert expected_calibration_error(PROBS, LABELS, num_bins=2) == pytest.approx(0.175)
    # tensors give the same, float32 included (its 0.6 is 0.6000000238 but lies on the edge in its own precision)
    assert expected_calibration_error(torch.tensor(PROBS), torch.tensor(LABELS), 5) == pytest.approx(0.125)
    assert expected_calibration_error(np.array(PROBS, np.float32), np.array(LABELS), 5) == pytest.approx(0.125)
    assert reliability_bins(torch.tensor(PROBS, dtype=torch.float64), LABELS, 5)["count"] == [0, 0, 2, 1, 1]
    # confidences of exactly 1 go to the last bin
    assert reliability_bins([[1.0, 0.0]], [1], num_bins=4)["count"] == [0, 0, 0, 1]
    assert expected_calibration_error([[1.0, 0.0]], [1], num_bins=4) == pytest.approx(1.0)


def test_ece_input_errors():
    with pytest.raises(ValueError, match=r"row 1 sums to 0\.9"):
        expected_calibration_error([[0.5, 0.5], [0.5, 0.4]], [0, 1])
    with pytest.raises(ValueError, match=r"row 0 has values outside \[0, 1\]"):
        expected_calibration_error([[1.5, -0.5]], [0])
    with pytest.raises(ValueError, match=r"label 2 at index 1 is not a class index in \[0, 2\)"):
        expected_calibration_error(PROBS, [0, 2, 1, 0])
    with pytest.raises(ValueError, match="non-empty"):
        expected_calibration_error(np.zeros((0, 2)), [])
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        expected_calibration_error(PROBS, [0, 1])
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(PROBS, LABELS, num_bins=0)


def test_reliability_diagram_png(tmp_path):
    path = plot_reliability_diagram(PROBS, LABELS, tmp_path / "sub" / "rel.png", num_bins=5, title="test")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == ["rel.png"]  # no temporary file left behind


def test_subgroup_metrics_by_hand():
    preds = [0, 0, 1, 0, 1, 1, 2, 2, 0]
    labels = [0, 0, 1, 1, 1, 2, 2, 2, 0]
    groups = ["A", "A", "A", "A", "B", "B", "C", "C", "C"]
    out = subgroup_metrics(preds, labels, groups)
    # A: 3 of 4 right. class 0: TP 2, FP 1, FN 0 -> F1 = 4/5; class 1: TP 1, FP 0, FN 1 -> 2/3; macro 11/15
    # B: 1 of 2 right; class 1: TP 1, FP 1 -> 2/3; class 2: TP 0, FN 1 -> 0; macro 1/3
    # C: 3 of 3 right; classes 2 and 0 both F1 1
    assert out["groups"]["A"] == {"count": 4, "accuracy": 0.75, "macro_f1": pytest.approx(11 / 15)}
    assert out["groups"]["B"] == {"count": 2, "accuracy": 0.5, "macro_f1": pytest.approx(1 / 3)}
    assert out["groups"]["C"] == {"count": 3, "accuracy": 1.0, "macro_f1": pytest.approx(1.0)}
    assert out["worst_group"] == "B"
    assert out["gap"] == pytest.approx(0.5)  # 1.0 - 0.5
    # class names work as well as indices
    named = subgroup_metrics(["x", "y"], ["x", "x"], [1, 1])
    assert named["groups"][1]["accuracy"] == 0.5 and named["gap"] == 0.0
    with pytest.raises(ValueError, match=r"differ in length \(2, 2, 3\)"):
        subgroup_metrics([0, 1], [0, 1], ["a", "b", "c"])


CLASSES = ["benign", "malignant", "normal"]


def _write_predictions(tmp_path):
    """predictions.csv from the real PredictionWriter: two frames for b.png, one for the others."""
    files = {
        "a.png": [[0.7, 0.2, 0.1]],
        "b.png": [[0.2, 0.6, 0.2], [0.2, 0.4, 0.4]],  # mean [0.2, 0.5, 0.3]
        "c.png": [[0.1, 0.1, 0.8]],
        "d.png": [[0.4, 0.6, 0.0]],
        "e.png": [[0.3, 0.3, 0.4]],
    }
    img = tmp_path / "images"
    batch = [{"source": str(img / name)} for name, frames in files.items() for _ in frames]
    output = [{"pred": torch.tensor(p)} for frames in files.values() for p in frames]
    engine = Engine(lambda e, b: output)
    PredictionWriter(tmp_path / "infer", CLASSES).attach(engine)
    engine.run([batch], max_epochs=1)
    return tmp_path / "infer" / "predictions.csv", img


def _datalist(tmp_path, img):
    (tmp_path / "lists").mkdir(exist_ok=True)
    items = [
        {"image": str(img / "a.png"), "label": 0, "site": "A"},  # exact string
        {"image": "../images/b.png", "label": "malignant", "site": "A"},  # relative to the datalist's folder
        {"image": "/elsewhere/c.png", "label": "benign", "site": "A"},  # basename only
        {"image": str(img / "d.png"), "label": 1, "site": "B"},
        {"image": str(img / "e.png"), "label": "2", "site": "B"},
        {"image": str(img / "f.png"), "label": 0, "site": "B"},  # never predicted
    ]
    path = tmp_path / "lists" / "data.json"
    path.write_text(json.dumps(items))
    return path


def test_read_predictions_of_prediction_writer(tmp_path):
    csv_path, img = _write_predictions(tmp_path)
    files, probs, classes = read_predictions(csv_path)
    assert classes == CLASSES
    assert files == [str(img / n) for n in ("a.png", "b.png", "c.png", "d.png", "e.png")]
    assert probs[1].tolist() == pytest.approx([0.2, 0.5, 0.3])
    assert probs.dtype == torch.float64


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("file,frames,label,p_a\n", "not a predictions.csv"),
        ("file,frames,predicted_class\n", "not a predictions.csv"),
        ("file,frames,predicted_class,p_a,p_b\n", "header only"),
        ("file,frames,predicted_class,p_a,p_b\nx,1,a,0.5,0.5\ny,1,a,0.5\n", "line 3 has 4 fields, header has 5"),
        ("file,frames,predicted_class,p_a,p_b\nx,1,a,0.5,0.4\n", "line 2 probabilities sum to 0.9"),
        ("file,frames,predicted_class,p_a,p_b\nx,1,a,1.5,-0.5\n", r"line 2 has a probability outside \[0, 1\]"),
        ("file,frames,predicted_class,p_a,p_b\nx,1,a,one,0\n", "line 2 has a probability that is not a number"),
        ("file,frames,predicted_class,p_a,p_b\nx,1,a,1,0\nx,1,a,1,0\n", "line 3 repeats file 'x' of line 2"),
    ],
)
def test_read_predictions_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad\.csv: .*{message}"):
        read_predictions(path)


def _check_by_hand(result):
    # predicted / true (conf): a 0/0 (.7)  b 1/1 (.5)  c 2/0 (.8)  d 1/1 (.6)  e 2/2 (.4)  -> accuracy 4/5
    assert result["n"] == 5 and result["n_unpredicted"] == 1
    assert result["accuracy"] == pytest.approx(0.8)
    # benign: TP 1, FN 1 -> 2/3; malignant: TP 2 -> 1; normal: TP 1, FP 1 -> 2/3; macro 7/9
    assert result["f1"] == pytest.approx({"benign": 2 / 3, "malignant": 1.0, "normal": 2 / 3})
    assert result["macro_f1"] == pytest.approx(7 / 9)
    # 5 bins: (.2,.4] e: acc 1, conf .4 -> 1/5*.6 = .12; (.4,.6] b, d: acc 1, conf .55 -> 2/5*.45 = .18
    #         (.6,.8] a, c: acc .5, conf .75 -> 2/5*.25 = .10; ECE = .40
    assert result["ece"] == pytest.approx(0.40)
    assert result["reliability"]["count"] == [0, 1, 2, 2, 0]
    # site A: a, b right, c wrong -> 2/3; B: d, e right -> 1; gap 1/3
    # A macro-F1 over benign, malignant, normal: 2/3, 1, 0 (predicted once, never true) -> 5/9
    sub = result["subgroups"]
    assert sub["groups"]["A"]["accuracy"] == pytest.approx(2 / 3) and sub["groups"]["A"]["count"] == 3
    assert sub["groups"]["A"]["macro_f1"] == pytest.approx(5 / 9)
    assert sub["groups"]["B"]["accuracy"] == 1.0
    assert sub["worst_group"] == "A" and sub["gap"] == pytest.approx(1 / 3)


def test_evaluate_predictions_joins_by_path_and_basename(tmp_path, caplog):
    csv_path, img = _write_predictions(tmp_path)
    datalist = _datalist(tmp_path, img)
    with caplog.at_level("WARNING", logger="monai_metalr"):
        result = evaluate_predictions(csv_path, datalist, group_key="site", num_bins=5, out_dir=tmp_path / "eval")
    assert "1 file(s) of" in caplog.text
    _check_by_hand(result)
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["ece"] == pytest.approx(0.40) and saved["subgroups"]["worst_group"] == "A"
    assert saved["reliability"]["accuracy"][0] is None  # empty bin: strict JSON null, not NaN
    assert (tmp_path / "eval" / "reliability.png").read_bytes()[:8] == PNG_MAGIC
    # a list of dicts works the same; without group_key no subgroups
    items = json.loads(datalist.read_text())
    items[1]["image"] = str(img / "b.png")
    plain = evaluate_predictions(csv_path, items, num_bins=5)
    assert plain["accuracy"] == pytest.approx(0.8) and "subgroups" not in plain


def test_evaluate_predictions_errors(tmp_path):
    csv_path, img = _write_predictions(tmp_path)
    items = json.loads(_datalist(tmp_path, img).read_text())[:3]
    with pytest.raises(ValueError, match=r"predictions\.csv: 2 predicted file\(s\) not found in datalist: .*d\.png"):
        evaluate_predictions(csv_path, items)
    bad = [dict(i) for i in json.loads(_datalist(tmp_path, img).read_text())]
    bad[0]["label"] = "cyst"
    with pytest.raises(ValueError, match=r"data\.json item 0: label 'cyst' is not one of the classes"):
        evaluate_predictions(csv_path, _save(tmp_path, bad))
    bad[0]["label"] = 3
    with pytest.raises(ValueError, match=r"item 0: label 3 is not a class index in \[0, 3\)"):
        evaluate_predictions(csv_path, bad)
    del bad[0]["label"]
    with pytest.raises(ValueError, match="item 0 has no 'label' key"):
        evaluate_predictions(csv_path, bad)
    (tmp_path / "obj.json").write_text(json.dumps({"testing": []}))
    with pytest.raises(ValueError, match=r"obj\.json: expected a JSON list"):
        evaluate_predictions(csv_path, tmp_path / "obj.json")


def _save(tmp_path, items):
    path = tmp_path / "lists" / "data.json"
    path.write_text(json.dumps(items))
    return path


def test_evaluation_cli(tmp_path, capsys):
    csv_path, img = _write_predictions(tmp_path)
    datalist = _datalist(tmp_path, img)
    out = tmp_path / "cli"
    result = main(
        ["--predictions", str(csv_path), "--datalist", str(datalist), "--group_key", "site", "--bins", "5"]
        + ["--out_dir", str(out)]
    )
    _check_by_hand(result)
    assert json.loads((out / "evaluation.json").read_text())["macro_f1"] == pytest.approx(7 / 9)
    assert (out / "reliability.png").read_bytes()[:8] == PNG_MAGIC
    text = capsys.readouterr().out
    assert "accuracy 0.8000" in text and "ECE 0.4000" in text and "site=A" in text


def _labelled(counts):
    return [{"id": f"{c}-{k}", "label": c} for c, n in counts.items() for k in range(n)]


def test_data_efficiency_subsets_are_nested_stratified_and_seeded():
    items = _labelled({0: 10, 1: 4, 2: 1})
    fractions = (0.1, 0.25, 0.5, 1.0)
    subsets = data_efficiency_subsets(items, fractions, seed=3)
    assert list(subsets) == list(fractions)
    # per class max(1, round-half-up(f * n)): 0.1 -> 1, 1, 1; 0.25 -> 3 (2.5), 1, 1; 0.5 -> 5, 2, 1; 1 -> 10, 4, 1
    expected = {0.1: [1, 1, 1], 0.25: [3, 1, 1], 0.5: [5, 2, 1], 1.0: [10, 4, 1]}
    for f, subset in subsets.items():
        assert [sum(i["label"] == c for i in subset) for c in range(3)] == expected[f]
    ids = {f: [i["id"] for i in s] for f, s in subsets.items()}
    for small, large in zip(fractions, fractions[1:]):
        assert set(ids[small]) <= set(ids[large])
    assert ids[1.0] == [i["id"] for i in items]  # everything, in datalist order
    again = data_efficiency_subsets(items, fractions, seed=3)
    assert {f: [i["id"] for i in s] for f, s in again.items()} == ids
    other = [data_efficiency_subsets(items, fractions, seed=s)[0.5] for s in range(4, 8)]
    assert any([i["id"] for i in o] != ids[0.5] for o in other)


def test_data_efficiency_subsets_errors():
    items = _labelled({0: 3})
    for bad in ((0.0, 0.5), (1.5,), (float("nan"),), ()):
        with pytest.raises(ValueError, match="fraction"):
            data_efficiency_subsets(items, bad)
    with pytest.raises(ValueError, match="item 1 has no 'label' key"):
        data_efficiency_subsets([{"label": 0}, {"y": 1}], (0.5,))
    with pytest.raises(ValueError, match="empty"):
        data_efficiency_subsets([], (0.5,))


def test_plot_data_efficiency(tmp_path):
    results = {"MetaLR": {0.1: [0.6, 0.64], 0.5: [0.8, 0.82, 0.79], 1.0: 0.88}, "fine-tune": {0.1: 0.5, 1.0: [0.85]}}
    path = plot_data_efficiency(results, tmp_path / "eff.png", metric="accuracy")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no results"):
        plot_data_efficiency({}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="'x', fraction 0.5: no values"):
        plot_data_efficiency({"x": {0.5: []}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_predictions_csv_format_is_what_read_predictions_expects(tmp_path):
    # guard against the writer changing its header: the evaluation reads exactly this layout
    csv_path, _ = _write_predictions(tmp_path)
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["file", "frames", "predicted_class", "p_benign", "p_malignant", "p_normal"]
