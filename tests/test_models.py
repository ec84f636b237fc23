"""Built-in CIFAR ResNets and the checkpoint loader, on real pretrained weights when present."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the models need PyTorch: pip install 'convspectra[torch]'")

from conftest import pretrained_checkpoint  # noqa: E402
from convspectra import ParameterError  # noqa: E402
from convspectra.models import cifar_resnet, get_model, load_weights, resnet20, resnet32  # noqa: E402


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_architecture_counts(depth):
    model = cifar_resnet(depth)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth - 1
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert sum(c.stride == (2, 2) for c in convs) == 2
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_pretrained_checkpoints_load_strictly(depth):
    path = pretrained_checkpoint(depth)
    model = load_weights(cifar_resnet(depth), path)
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.layer3[0].conv2.weight, raw["module.layer3.0.conv2.weight"])
    assert torch.equal(model.linear.bias, raw["module.linear.bias"])


def test_wrappers_and_prefixes(tmp_path):
    source = resnet20()
    for i, wrapped in enumerate(
        [
            source.state_dict(),
            {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}},
            {"model": {"_orig_mod." + k: v for k, v in source.state_dict().items()}, "epoch": 3},
        ]
    ):
        path = tmp_path / f"w{i}.pt"
        torch.save(wrapped, path)
        target = load_weights(resnet20(), path)
        assert torch.equal(target.layer2[1].conv1.weight, source.layer2[1].conv1.weight)


def test_mismatch_and_bad_files_name_the_problem(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(resnet20().state_dict(), path)
    with pytest.raises(ParameterError, match="does not match the model CifarResNet: missing"):
        load_weights(resnet32(), path)
    with pytest.raises(ParameterError, match="expected an existing file"):
        load_weights(resnet20(), tmp_path / "absent.th")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ParameterError, match="could not read"):
        load_weights(resnet20(), tmp_path / "junk.pt")
    torch.save({"epoch": 1}, tmp_path / "nostate.pt")
    with pytest.raises(ParameterError, match="hold a state dict"):
        load_weights(resnet20(), tmp_path / "nostate.pt")
    with pytest.raises(ParameterError, match="6n \\+ 2"):
        cifar_resnet(21)
    with pytest.raises(ParameterError, match="resnet32"):
        get_model("resnet33")


def test_a_safetensors_file_of_one_tensor_needs_no_key(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors not installed (optional)")
    from convspectra.models.weights import load_tensor_file

    kernel = torch.randn(4, 3, 3, 3)
    safetensors.save_file({"whatever": kernel}, str(tmp_path / "one.safetensors"))
    assert torch.equal(load_tensor_file(tmp_path / "one.safetensors"), kernel)
    torch.save({"conv.weight": kernel}, tmp_path / "one.pt")  # a state dict of one tensor still names it
    with pytest.raises(ParameterError, match=r"one of \['conv.weight'\]; got none"):
        load_tensor_file(tmp_path / "one.pt")
    with pytest.raises(ParameterError, match=r"got 'conv.weigth' \(close: conv.weight\)"):
        load_tensor_file(tmp_path / "one.pt", key="conv.weigth")
