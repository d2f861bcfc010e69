"""deepbet's LinkNet3d: loading a TorchScript file into the eager DeepBetNet, its layer groups, one MetaLR step, and
the errors for bad files and inputs; the real weights (identical outputs) when `make study-data` has run."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from monai_metalr import MetaLR, layer_groups, param_groups
from monai_metalr.networks import DEEPBET_LAYER_GROUPS, DeepBetNet, deepbet_normalize, load_deepbet

GROUPS = ["init", "down0", "down1", "down2", "down3", "up0", "up1", "up2", "up3", "head"]


@pytest.fixture(scope="module")
def scripted_file(tmp_path_factory):
    """A TorchScript file like deepbet's: a traced random DeepBetNet (softmax output)."""
    torch.manual_seed(0)
    net = DeepBetNet(probabilities=True).eval()
    path = tmp_path_factory.mktemp("deepbet") / "model.pt"
    with warnings.catch_warnings():  # the input-size check is a Python branch: traced as a constant, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.save(torch.jit.trace(net, torch.randn(1, 1, 64, 64, 64)), str(path))
    return path


@pytest.mark.slow
def test_load_gives_a_trainable_copy(scripted_file):
    net = load_deepbet(scripted_file, probabilities=True)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert len(net.state_dict()) == 38 and sum(p.numel() for p in net.parameters()) == 2_126_258
    scripted = torch.jit.load(str(scripted_file)).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), scripted(x))
    logits = load_deepbet(scripted_file).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(logits(x), 1), scripted(x))


@pytest.mark.slow
def test_layer_groups_and_one_meta_step(scripted_file):
    net = load_deepbet(scripted_file)
    assert list(layer_groups(net, DEEPBET_LAYER_GROUPS)) == GROUPS
    assert layer_groups(net) == layer_groups(net, DEEPBET_LAYER_GROUPS)  # "auto" uses the same groups
    opt = torch.optim.Adam(param_groups(net, 1e-3, DEEPBET_LAYER_GROUPS))
    loss = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(1, 1, 64, 64, 64, generator=g), torch.randint(0, 2, (1, 64, 64, 64), generator=g))
               for _ in range(2)]  # fmt: skip
    meta = MetaLR(net, opt, batches[1:], loss)
    x, y = batches[0]
    opt.zero_grad()
    loss(net(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())  # gradients reach all
    before = {k: v.clone() for k, v in net.state_dict().items()}
    h = meta.step()
    assert h is not None and h.shape == (10,) and torch.isfinite(h).all()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the look-ahead left it alone
    opt.step()
    assert all(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    again = DeepBetNet()
    again.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), net.eval()(x))


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt: deepbet model file not found"):
        load_deepbet(tmp_path / "nothere.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt"):
        load_deepbet(empty)
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"other\.pt: not a deepbet LinkNet3d checkpoint"):
        load_deepbet(other)
    cut = tmp_path / "cut.pt"
    full = io.BytesIO()
    torch.save(DeepBetNet().state_dict(), full)
    cut.write_bytes(full.getvalue()[:5000])
    with pytest.raises(ValueError, match=r"cut\.pt"):
        load_deepbet(cut)


def test_input_size_and_normalisation():
    net = DeepBetNet()
    for shape in [(1, 1, 48, 64, 64), (1, 1, 32, 32, 32), (1, 2, 64, 64, 64)]:
        with pytest.raises(ValueError, match="multiples of 32, at least 64"):
            net(torch.zeros(shape))
    x = torch.linspace(0, 1000, 4096).reshape(16, 16, 16)
    y = deepbet_normalize(x)
    assert float(y.mean()) == pytest.approx(0.449, abs=1e-4) and float(y.std()) == pytest.approx(0.226, abs=1e-4)
    with pytest.raises(ValueError, match="not above lower bound"):
        deepbet_normalize(torch.ones(8, 8, 8))


def _real():
    from monai_metalr.data import fetched_path

    try:
        return fetched_path("deepbet")
    except FileNotFoundError:
        pytest.skip("run make study-data")


@pytest.mark.parametrize("name", ["model.pt", "bbox_model.pt"])
def test_real_weights_match_torchscript(name):
    path = _real() / name
    net = load_deepbet(path, probabilities=True).eval()
    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    x = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x), scripted(x))


@pytest.mark.slow
def test_real_bbox_model_finds_the_colin27_brain():
    """deepbet's own first stage on real data: the 128^3 bbox network on Colin27 (with skull) covers the AAL atlas."""
    from monai_metalr.data import fetched_path, read_colin27

    try:
        volume = read_colin27(fetched_path("mricron"))
    except FileNotFoundError:
        pytest.skip("run make study-data")
    net = load_deepbet(_real() / "bbox_model.pt", probabilities=True).eval()
    t1 = torch.from_numpy(volume.t1)  # RAS already, as deepbet's as_closest_canonical would make it
    small = torch.nn.functional.interpolate(t1[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
    with torch.no_grad():
        brain = net(deepbet_normalize(small)[None, None])[0, 1] > 0.5
    atlas = torch.nn.functional.interpolate(torch.from_numpy(volume.atlas)[None, None].float(), (128, 128, 128),
                                            mode="nearest-exact")[0, 0] > 0  # fmt: skip
    covered = float((brain & atlas).sum() / atlas.sum())
    voxel_ml = 181 * 217 * 181 / 128**3 / 1000  # ml per 128^3 voxel
    assert covered > 0.95  # measured: 99.3 %
    # measured 1962 ml: the coarse first-stage mask of the (large, MNI-sized) Colin27 brain with CSF, not the head
    assert 1200 < float(brain.sum()) * voxel_ml < 2500
