"""Experiments: dataset readers, Figure 1 bench (accuracy only), training arms, exact resume, summary, CLI."""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convspectra.cli import main  # noqa: E402
from convspectra.errors import CheckpointError, CheckpointWarning, ParameterError, ParameterTypeError  # noqa: E402
from convspectra.experiments import datasets as ds  # noqa: E402
from convspectra.experiments.config import Arm, TrainConfig, learning_rate, parse_arm  # noqa: E402
from convspectra.experiments.convolutions import conv_records, project_convolutions  # noqa: E402
from convspectra.experiments.summary import summarize, write_summary  # noqa: E402
from convspectra.experiments.training import run_experiment, train_run  # noqa: E402
from convspectra.operator import dense_matrix  # noqa: E402

# ------------------------------------------------------------------------------------------ datasets


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX bytes written by hand from the format's definition (uint8 only), independent of write_idx."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_reader_reads_hand_written_files(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 7),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 4]),
    }
    for name, array in arrays.items():
        payload = _idx_bytes(array)
        if compressed:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (tmp_path / name).write_bytes(payload)
    data = ds.load_dataset("fashion-mnist", tmp_path)
    np.testing.assert_array_equal(data.train_images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test_images[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test_labels, [9, 0, 4])
    assert data.train_labels.dtype == np.int64 and data.num_classes == 10 and data.image_size == (28, 28)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_roundtrip_all_types(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    ds.write_idx(tmp_path / "a", array, gzip_file=True)
    out = ds.read_idx(tmp_path / "a")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_cifar_reader_reads_hand_written_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    expected = {}
    for name in [*ds.CIFAR_TRAIN_BATCHES, ds.CIFAR_TEST_BATCH]:
        data = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        expected[name] = (data, labels)
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, handle)
    loaded = ds.load_dataset("cifar10", tmp_path)
    train = np.concatenate([expected[n][0] for n in ds.CIFAR_TRAIN_BATCHES])
    # CIFAR rows are 1024 red, then green, then blue values, each row-major 32x32.
    np.testing.assert_array_equal(loaded.train_images[4, 1, 2, 5], train[4, 1024 + 2 * 32 + 5])
    np.testing.assert_array_equal(loaded.train_images.reshape(15, -1), train)
    np.testing.assert_array_equal(loaded.test_labels, expected[ds.CIFAR_TEST_BATCH][1])
    # torchvision's layout: a cifar-10-batches-py folder inside the given one
    nested = tmp_path / "outer"
    ds.write_synthetic_cifar(nested / "cifar-10-batches-py", train_per_batch=2, test=3)
    assert ds.load_cifar10(nested).train_images.shape == (10, 3, 32, 32)


def test_synthetic_writers_use_the_standard_formats(tmp_path: Path) -> None:
    ds.write_synthetic_idx(tmp_path / "raw", train=6, test=4)
    ds.write_synthetic_idx(tmp_path / "gz", train=6, test=4, gzip_files=True)
    raw, gz = ds.load_idx_dataset(tmp_path / "raw"), ds.load_idx_dataset(tmp_path / "gz")
    np.testing.assert_array_equal(raw.train_images, gz.train_images)
    assert (tmp_path / "gz" / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "raw" / "t10k-labels-idx1-ubyte").read_bytes()[:4] == b"\x00\x00\x08\x01"
    ds.write_synthetic_cifar(tmp_path / "cifar", train_per_batch=3, test=2)
    with open(tmp_path / "cifar" / "data_batch_2", "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    assert batch[b"data"].shape == (3, 3072) and batch[b"data"].dtype == np.uint8 and len(batch[b"labels"]) == 3
    subset = ds.load_cifar10(tmp_path / "cifar").subset(train=5, test=1, seed=3)
    assert subset.train_images.shape == (5, 3, 32, 32) and subset.test_images.shape == (1, 3, 32, 32)


def test_dataset_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")  # promises 5 bytes, holds 2
    with pytest.raises(ParameterError, match="expected 5 data bytes"):
        ds.read_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(ParameterError, match="expected an IDX file"):
        ds.read_idx(bad)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        ds.load_idx_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a folder"):
        ds.load_idx_dataset(tmp_path / "missing")
    ds.write_synthetic_cifar(tmp_path / "c", train_per_batch=1, test=1)
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['data_batch_3'\]"):
        ds.load_cifar10(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ParameterError, match="CIFAR-10 python batch"):
        ds.load_cifar10(tmp_path / "c")
    with pytest.raises(ParameterError, match="dataset: expected one of"):
        ds.load_dataset("mnist2")
    with pytest.raises(ParameterError, match="download: expected no download for fashion-mnist"):
        ds.load_dataset("fashion-mnist", tmp_path, download=True)
    data = ds.load_idx_dataset(_synthetic_idx(tmp_path / "s"))
    with pytest.raises(ParameterError, match=r"train: expected an integer in \[1, 24\], got 25"):
        data.subset(train=25)


def test_cifar_default_folder_is_under_the_data_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVSPECTRA_DATA", raising=False)
    with pytest.raises(ParameterError, match=r"data_dir: expected the CIFAR-10 folder.*--data-dir.*CONVSPECTRA_DATA"):
        ds.load_dataset("cifar10")
    ds.write_synthetic_cifar(tmp_path / "cifar10", train_per_batch=2, test=3)
    monkeypatch.setenv("CONVSPECTRA_DATA", str(tmp_path))
    data = ds.load_dataset("cifar10")
    assert data.train_images.shape == (10, 3, 32, 32) and data.source == str(tmp_path / "cifar10")


def test_cifar_download_without_torchvision_says_so(tmp_path: Path) -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - depends on the environment
        pytest.skip("torchvision is installed here; this test checks the message when it is not")
    with pytest.raises(ImportError, match="torchvision is not installed"):
        ds.load_dataset("cifar10", tmp_path, download=True)


# ------------------------------------------------------------------------------------------ Figure 1


def test_bench_figure1_quick_csv_and_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path, json_path, plot_path = tmp_path / "f1.csv", tmp_path / "f1.json", tmp_path / "f1.svg"
    status = main(
        ["bench", "figure1", "--quick", "--device", "cpu", "--csv", str(csv_path), "--json", str(json_path),
         "--plot", str(plot_path), "--repeats", "1"]
    )  # fmt: skip
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert {r["panel"] for r in rows} == {"3x3@16x16", "11x11@64x64"}
    methods = {"full-matrix SVD", "paper (NumPy)", "convspectra (CPU)"}
    for panel, channels in [("3x3@16x16", "1"), ("3x3@16x16", "2"), ("11x11@64x64", "1"), ("11x11@64x64", "2")]:
        point = {r["method"]: r for r in rows if r["panel"] == panel and r["channels"] == channels}
        assert set(point) == methods
        for method in ("paper (NumPy)", "convspectra (CPU)"):
            assert point[method]["status"] == "ok" and float(point[method]["median_seconds"]) > 0
        assert point["convspectra (CPU)"]["reference"] in {"full-matrix SVD", "paper (NumPy)"}
        assert float(point["convspectra (CPU)"]["max_error"]) < 1e-12
        if point["full-matrix SVD"]["status"] == "skipped":
            assert point["full-matrix SVD"]["reason"].startswith(("time:", "memory:"))
    # a 256 x 256 dense SVD always fits the quick budget, so the smallest point is checked against it
    smallest = {r["method"]: r for r in rows if r["panel"] == "3x3@16x16" and r["channels"] == "1"}
    assert smallest["full-matrix SVD"]["status"] == "ok"
    assert smallest["convspectra (CPU)"]["reference"] == "full-matrix SVD"
    assert smallest["paper (NumPy)"]["reference"] == "full-matrix SVD"
    # the 11x11 dense matrix at 64x64 (4096 x 4096 per channel) is skipped by the 2 s budget, with the reason
    big = {r["method"]: r for r in rows if r["panel"] == "11x11@64x64" and r["channels"] == "2"}
    assert big["full-matrix SVD"]["status"] == "skipped" and "budget 2 s" in big["full-matrix SVD"]["reason"]
    report = json.loads(json_path.read_text())
    assert {"cpu", "cores", "numpy", "torch", "blas"} <= set(report["machine"])
    assert len(report["rows"]) == len(rows)
    assert (tmp_path / "f1-3x3-16x16.svg").read_text().startswith("<svg")
    assert "paper/convspectra" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "figure1", "--budget", "0"], "expected a positive number of seconds, got '0'"),
        (["bench", "figure1", "--quick", "--plot", "x.pdf", "--repeats", "1"], "ending in .svg or .png"),
        (["bench"], "required: EXPERIMENT"),
        (["train", "--out", "x", "--arms", "clip=-1"], "positive finite number, got 'clip=-1'"),
        (["train", "--out", "x", "--epochs", "0"], "expected a positive integer, got 0"),
    ],
)
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = [str(tmp_path / a) if a == "x.pdf" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bench_figure1_cuda_without_gpu_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():  # pragma: no cover - depends on the machine
        pytest.skip("a GPU is present; this checks the error without one")
    assert main(["bench", "figure1", "--quick", "--device", "cuda"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ training


def _synthetic_idx(folder: Path, train: int = 24, test: int = 8) -> Path:
    # 12x12 images: fast spectra, and the last stage still sees 3x3 inputs
    ds.write_synthetic_idx(folder, train=train, test=test, gzip_files=True, size=12)
    return folder


def _config(data_dir: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "dataset": "fashion-mnist",
        "data_dir": str(data_dir),
        "depth": 8,
        "epochs": 1,
        "batch_size": 12,
        "project_every": 1,
        "device": "cpu",
        "threads": 1,  # one torch and one BLAS thread: tiny models, and no thread contention on a busy machine
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_every_arm_runs_two_steps_paired(tmp_path: Path) -> None:
    config = _config(_synthetic_idx(tmp_path / "data"))
    arms = [parse_arm(a) for a in ("baseline", "clip=0.1", "clip=0.5", "clip=1.0", "clip=2.5", "clip=3.0", "l1")]
    logs = run_experiment(config, arms, [0], tmp_path / "runs")
    names = ["baseline", "clip=0.1", "clip=0.5", "clip=1", "clip=2.5", "clip=3", "l1=1e-05"]
    assert [log["arm"] for log in logs] == names
    for log in logs:
        assert log["finished"] and log["epochs"][0]["steps"] == 2
        assert np.isfinite(log["epochs"][0]["train_loss"]) and 0 <= log["epochs"][0]["test_error"] <= 1
        assert set(log["epochs"][0]["sigma_max"]) == set(log["layers"]) and len(log["layers"]) == 7
        assert log["initial_sigma_max"] == logs[0]["initial_sigma_max"]  # same initialisation in every arm
        assert json.loads((tmp_path / "runs" / log["arm"] / "seed0" / "log.json").read_text()) == log
    assert logs[0]["projection"] is None and logs[-1]["projection"] is None
    assert all("clip" in log["projection"] for log in logs[1:-1])
    baseline = _final_weights(tmp_path / "runs" / "baseline" / "seed0")
    for arm in ("clip=0.1", "l1=1e-05"):
        other = _final_weights(tmp_path / "runs" / arm / "seed0")
        assert not torch.equal(other["conv1.weight"], baseline["conv1.weight"])
    # clipping at 0.1 shrinks every layer's norm far below the baseline's
    clipped = logs[1]["epochs"][0]["sigma_max"]
    assert max(clipped.values()) < 0.5 * min(logs[0]["epochs"][0]["sigma_max"].values())


def test_projection_matches_the_dense_svd_clip(tmp_path: Path) -> None:
    """One projection step = SVD-clip of PyTorch's own dense operator, then keep the k x k taps (the paper, Sec. 3)."""
    rng = np.random.default_rng(3)
    for out_c, in_c, n, c in [(4, 3, 6, 0.7), (2, 5, 5, 1.0), (3, 3, 4, 0.3)]:
        conv = torch.nn.Conv2d(in_c, out_c, 3, padding=1, bias=False).double()
        weight = rng.standard_normal((out_c, in_c, 3, 3))
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight))
        layers = conv_records(torch.nn.Sequential(conv), (in_c, n, n), c)
        assert [(layer.name, layer.input_shape, layer.max_norm) for layer in layers] == [("0", (n, n), c)]
        project_convolutions(layers)
        a = dense_matrix(weight, n)
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        clipped = (u * np.minimum(s, c)) @ vt
        # row (o, 0, 0) of a circular cross-correlation holds the taps: column (i, p, q) is K[o, i, p, q]
        taps = clipped.reshape(out_c, n, n, in_c, n, n)[:, 0, 0][..., :3, :3]
        scale = np.finfo(np.float64).eps * n * n * s[0]
        np.testing.assert_allclose(conv.weight.detach().numpy(), taps, rtol=0, atol=50 * scale)
        assert s[0] > c  # the clip was active


def test_resume_after_kill_is_bitwise_identical(tmp_path: Path) -> None:
    data = _synthetic_idx(tmp_path / "data", train=30, test=8)
    config = _config(data, epochs=3, batch_size=8, project_every=3, milestones=(2,))
    arm = Arm(clip=0.8)
    whole = train_run(config, arm, 5, tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_in_epoch_two(step: int) -> None:
        if step == 6:  # epoch 1 has 4 steps: die in the middle of epoch 2, after a projection at step 6
            raise Killed

    with pytest.raises(Killed):
        train_run(config, arm, 5, tmp_path / "killed", on_step=kill_in_epoch_two)
    partial = json.loads((tmp_path / "killed" / "log.json").read_text())
    assert len(partial["epochs"]) == 1 and not partial["finished"]
    first = train_run(config, arm, 5, tmp_path / "killed", max_epochs=1)  # resumes epoch 2, stops after it
    assert len(first["epochs"]) == 2 and first["resumed_at_epochs"] == [1]
    resumed = train_run(config, arm, 5, tmp_path / "killed")
    assert resumed["finished"] and resumed["resumed_at_epochs"] == [1, 2]
    assert [e["steps"] for e in resumed["epochs"]] == [4, 8, 12]
    for key in ("train_loss", "test_error", "test_loss", "lr", "sigma_max"):
        assert [e[key] for e in resumed["epochs"]] == [e[key] for e in whole["epochs"]]
    a, b = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # finished runs are not retrained; a different arm in the same folder is refused
    assert train_run(config, arm, 5, tmp_path / "killed")["epochs"] == resumed["epochs"]
    with pytest.raises(ParameterError, match="expected a checkpoint of arm baseline, seed 5"):
        train_run(config, Arm(), 5, tmp_path / "killed")


# ---------------------------------------------------------------- checkpoints: a checksum, and errors naming the file


@pytest.fixture(scope="module")
def half_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    """A 2-epoch run stopped after its first epoch: a folder with a checkpoint to resume from."""
    root = tmp_path_factory.mktemp("half_run")
    config = _config(_synthetic_idx(root / "data", train=16, test=8), epochs=2, batch_size=8)
    train_run(config, Arm(clip=0.8), 3, root / "run", max_epochs=1)
    return config, root / "run"


def _copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target / "checkpoint.pt"


def _flip_a_byte_of(path: Path, tensor: torch.Tensor) -> None:
    """Flip one byte in the middle of ``tensor``'s storage inside the checkpoint file."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0  # the storage appears once, verbatim
    data[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_checkpoint_carries_a_checksum_of_its_content(half_run) -> None:
    from convspectra.experiments.checkpoint import CHECKSUM, state_digest

    checkpoint = torch.load(half_run[1] / "checkpoint.pt", weights_only=True)
    assert checkpoint[CHECKSUM] == state_digest(checkpoint) and len(checkpoint[CHECKSUM]) == 64


def test_one_flipped_byte_in_a_weight_is_refused_naming_the_file(half_run, tmp_path: Path) -> None:
    config, source = half_run
    path = _copy_run(source, tmp_path / "run")
    weight = torch.load(path, weights_only=True)["model"]["conv1.weight"]
    _flip_a_byte_of(path, weight)
    loaded = torch.load(path, weights_only=True)["model"]["conv1.weight"]  # torch itself reads it without a word
    assert loaded.shape == weight.shape and not torch.equal(loaded, weight)
    with pytest.raises(CheckpointError) as info:
        train_run(config, Arm(clip=0.8), 3, tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"run_dir: the checkpoint {str(path)!r} is corrupted") and "SHA-256 checksum" in message


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
        (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "it is truncated, corrupted"),
        (lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)), "not a torch checkpoint"),
        (
            lambda path: torch.save({"weights": torch.ones(3)}, path),
            "is not a checkpoint of a convspectra training run",
        ),
        (lambda path: torch.save(torch.ones(3), path), "is not a checkpoint of a convspectra training run"),
    ],
)
def test_an_unusable_checkpoint_is_refused_naming_the_file_and_the_problem(half_run, tmp_path, damage, fragment):
    config, source = half_run
    path = _copy_run(source, tmp_path / "run")
    damage(path)
    with pytest.raises(CheckpointError) as info:
        train_run(config, Arm(clip=0.8), 3, tmp_path / "run")
    message = str(info.value)
    assert str(path) in message and fragment in message, message
    assert "\n" not in message and "delete it" in message


def test_a_changed_config_names_the_fields_that_differ(half_run, tmp_path: Path) -> None:
    config, source = half_run
    _copy_run(source, tmp_path / "run")
    changed = TrainConfig.from_dict({**config.to_dict(), "batch_size": 4, "lr": 0.05})
    with pytest.raises(CheckpointError) as info:
        train_run(changed, Arm(clip=0.8), 3, tmp_path / "run")
    message = str(info.value)
    assert "was written with another config" in message and str(tmp_path / "run" / "checkpoint.pt") in message
    assert f"config.batch_size: checkpoint 8, now 4; config.lr: checkpoint {config.lr!r}, now 0.05" in message
    with pytest.raises(CheckpointError, match="expected a checkpoint of arm baseline, seed 3"):
        train_run(config, Arm(), 3, tmp_path / "run")


def test_a_checkpoint_without_checksum_resumes_with_a_warning(half_run, tmp_path: Path) -> None:
    config, source = half_run
    path = _copy_run(source, tmp_path / "run")
    old = torch.load(path, weights_only=True)
    del old["sha256"]  # as written before checkpoints carried a checksum
    torch.save(old, path)
    with pytest.warns(CheckpointWarning, match="has no checksum"):
        log = train_run(config, Arm(clip=0.8), 3, tmp_path / "run")
    assert log["finished"] and log["resumed_at_epochs"] == [1]
    assert "sha256" in torch.load(path, weights_only=True)  # the next checkpoint has one


def test_progress_is_called_after_every_batch_and_torch_settings_are_restored(tmp_path: Path) -> None:
    config = _config(_synthetic_idx(tmp_path / "data", train=20), epochs=2, batch_size=8)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    calls: list[tuple[int, int, str]] = []
    log = train_run(config, Arm(clip=0.5), 0, tmp_path / "run", progress=lambda *args: calls.append(args))
    assert [(done, total) for done, total, _ in calls] == [(step, 6) for step in range(1, 7)]  # 3 batches x 2 epochs
    assert calls[0][2].startswith("clip=0.5 seed 0 epoch 1/2, loss ") and calls[-1][2].startswith(
        "clip=0.5 seed 0 epoch 2/2"
    )
    assert float(calls[-1][2].rsplit(" ", 1)[1]) == pytest.approx(log["epochs"][-1]["train_loss"], abs=5e-4)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic
    with pytest.raises(
        ParameterTypeError, match=r"progress: expected None or a callable progress\(done, total, label\)"
    ):
        train_run(config, Arm(), 0, tmp_path / "other", progress=True)


def test_summary_pairs_seeds_and_writes_figures(tmp_path: Path) -> None:
    config = _config(_synthetic_idx(tmp_path / "data"), epochs=2)
    logs = run_experiment(config, [Arm(), Arm(clip=0.5)], [0, 1], tmp_path / "runs")
    summary = summarize(tmp_path / "runs")
    final = {(log["arm"], log["seed"]): log["epochs"][-1]["test_error"] for log in logs}
    baseline, clip = summary.arms
    assert (baseline.arm, clip.arm) == ("baseline", "clip=0.5") and clip.seeds == [0, 1]
    diffs = [final[("clip=0.5", s)] - final[("baseline", s)] for s in (0, 1)]
    assert clip.paired_mean == pytest.approx(np.mean(diffs))
    assert clip.paired_std == pytest.approx(np.std(diffs, ddof=1))
    assert baseline.mean == pytest.approx(np.mean([final[("baseline", s)] for s in (0, 1)]))
    written = {p.name for p in write_summary(summary, tmp_path / "runs")}
    assert {"summary.json", "summary.md", "figure2.svg", "figure3.svg", "train_loss.svg"} <= written
    assert "| clip=0.5 | 0,1 |" in (tmp_path / "runs" / "summary.md").read_text()
    # runs of another schedule in the same folder make the table meaningless: refused
    run_experiment(_config(tmp_path / "data", epochs=1), [Arm()], [7], tmp_path / "runs")
    with pytest.raises(ParameterError, match="expected runs of one config"):
        summarize(tmp_path / "runs")


def test_train_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _synthetic_idx(tmp_path / "data")
    argv = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--depth", "8", "--epochs", "1",
            "--batch-size", "8", "--arms", "baseline", "clip=1", "--seeds", "0", "--device", "cpu", "--threads", "1",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| baseline | 0 |" in out and "| clip=1 | 0 |" in out
    assert (tmp_path / "out" / "clip=1" / "seed0" / "checkpoint.pt").is_file()
    assert main(["train", "--out", str(tmp_path / "out"), "--summary-only"]) == 0
    assert main(["train", "--out", str(tmp_path / "empty"), "--summary-only"]) == 2
    assert "found none" in capsys.readouterr().err


def test_config_and_schedule_validation() -> None:
    config = TrainConfig(epochs=164)
    assert config.schedule == (82, 123)
    assert [learning_rate(config, e) for e in (0, 82, 123)] == pytest.approx([0.1, 0.01, 0.001])
    with pytest.raises(ParameterError, match="milestones: expected increasing epochs"):
        TrainConfig(epochs=10, milestones=(5, 3))
    with pytest.raises(ParameterError, match="device: expected 'auto', 'cpu' or 'cuda', got 'tpu'"):
        TrainConfig(device="tpu")
    with pytest.raises(ParameterError, match="batch_size: expected a positive int"):
        TrainConfig(batch_size=0)
    assert parse_arm(" CLIP:2.5 ") == Arm(clip=2.5) and parse_arm("l1=3e-4") == Arm(l1=3e-4)
    for bad in ("clip", "clip=nan", "l1=0", "dropout=0.5"):
        with pytest.raises(ParameterError, match="arm: expected"):
            parse_arm(bad)
