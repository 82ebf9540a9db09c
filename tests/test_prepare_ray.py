"""`python -m data_pipelines.cli.prepare --runner=ray` writes the shards the single-process writer writes.

Each case prepares the same source with the default runner and with Ray into two directories and
compares them: the records of every shard (bytes, order, shard), sizes.npy and metadata.json
(header, skip counts). One local Ray instance serves the module, started and stopped by
ray_runner.session as prepare starts it; afterwards none of its processes may be left.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from data_pipelines.cli import prepare, ray_runner
from data_pipelines.core import shards
from tests.runner import ROOT, env_for


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(parent, []).append(int(entry))
    return out


def _descendants(pid: int) -> set[int]:
    children, found, todo = _children(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray instance (2 CPUs); checks at the end that its processes are gone."""
    before = _descendants(os.getpid())
    with ray_runner.session("", num_cpus=2):
        yield ray.get_runtime_context().gcs_address
        started = _descendants(os.getpid()) - before  # GCS, raylet, workers, monitors
    assert not ray.is_initialized()
    deadline = time.time() + 15
    while time.time() < deadline and any(_running(p) for p in started):
        time.sleep(0.2)
    left = [p for p in started if _running(p)]
    assert started and not left, f"Ray processes left running after shutdown: {left}"


def _prepare(out, *flags) -> int:
    return prepare.main([f"--out={out}", *flags])


def _shard_records(path: str) -> list[bytes]:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return reader.read_all()
    finally:
        reader.close()


def _assert_same_shards(a: str, b: str) -> dict:
    with open(os.path.join(a, shards.METADATA), "rb") as f:
        text = f.read()
    with open(os.path.join(b, shards.METADATA), "rb") as f:
        assert f.read() == text  # bytes: the counters' order too
    header = json.loads(text)
    np.testing.assert_array_equal(np.load(os.path.join(b, shards.SIZES)), np.load(os.path.join(a, shards.SIZES)))
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for shard in header["shards"]:
        expected = _shard_records(os.path.join(a, shard["file"]))
        got = _shard_records(os.path.join(b, shard["file"]))
        assert len(expected) == shard["records"] and len(got) == len(expected), shard["file"]
        for i, (x, y) in enumerate(zip(expected, got)):
            assert x == y, f"{shard['file']} record {i} differs: {sorted(shards.decode_record(y))}"
    return header


def test_digit_scenes_with_labels_and_defects(cluster, tmp_path):
    flags = ["--source=digit_scenes", "--num_shards=3", "--data.scenes.num_samples=40",
             "--data.scenes.defect_fraction=0.5"]
    assert _prepare(tmp_path / "local", *flags) == 0
    assert _prepare(tmp_path / "ray", *flags, "--runner=ray") == 0
    header = _assert_same_shards(tmp_path / "local", tmp_path / "ray")
    assert header["num_records"] == 40 and [s["records"] for s in header["shards"]] == [14, 13, 13]
    record = shards.decode_record(_shard_records(str(tmp_path / "ray" / header["shards"][0]["file"]))[0])
    assert {"image_bytes", "caption", "scene_box", "defect_box", "tags"} <= set(record)


def _image_folder(root) -> None:
    """12 captioned PNGs of different sizes, plus one of each kind of bad file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(root)
    for i in range(12):
        size = (24 + 8 * (i % 3), 32)
        Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(os.path.join(root, f"{i:02d}.png"))
        with open(os.path.join(root, f"{i:02d}.txt"), "w") as f:
            f.write(f"picture {i}")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(os.path.join(root, "03b_nocaption.png"))
    with open(os.path.join(root, "05b_garbage.png"), "wb") as f:  # no image header: skipped by the scan
        f.write(b"not a png at all")
    with open(os.path.join(root, "05b_garbage.txt"), "w") as f:
        f.write("garbage")
    # A valid header over cut-off pixel data: found only when a task decodes it.
    with open(os.path.join(root, "07.png"), "rb") as f:
        data = f.read()
    with open(os.path.join(root, "07b_truncated.png"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(root, "07b_truncated.txt"), "w") as f:
        f.write("truncated")


def test_folder_with_bad_files_through_a_cluster_address(cluster, tmp_path):
    """The Ray run is a separate `python -m data_pipelines.cli.prepare` joining the running
    instance by its address, as a user joins a cluster."""
    root = str(tmp_path / "images")
    _image_folder(root)
    flags = ["--source=folder", f"--path={root}", "--num_shards=4"]
    assert _prepare(tmp_path / "local", *flags) == 0
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.cli.prepare", f"--out={tmp_path / 'ray'}", *flags,
                           "--runner=ray", f"--ray_address={cluster}"],
                          cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = _assert_same_shards(tmp_path / "local", tmp_path / "ray")
    assert header["counts"] == {"read": 13, "written": 12,
                                "skipped": {"missing_caption": 1, "unreadable_image": 1, "truncated_image": 1}}
    # A skip found inside a task is reported by the driver, once, as the single-process run does.
    assert proc.stderr.count("skipping samples with truncated_image") == 1
    assert ray.is_initialized()  # the subprocess disconnected; the instance it joined stays up


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
    """A tiny image-VAE workdir (config.json + checkpoint) with random weights: what
    seedjax.train.params.load_codec reads, made without the minutes of compiling a training step."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from seedjax.config import load_config, save_config
    from seedjax.models.codec import abstract_vae

    workdir = str(tmp_path_factory.mktemp("vae"))
    cfg = load_config("experiments/quickstart/vae.py:tiny")
    cfg.vae.model.scaling_factor = 0.5  # set, so both runs skip estimating it (seconds of encoding)
    save_config(cfg, workdir)
    shapes = nnx.state(abstract_vae(cfg.vae), nnx.Param).to_pure_dict()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(workdir, "checkpoints", "1", "state"), {"vae": params})
    return workdir


@pytest.mark.slow  # a minute on a busy 2-core machine: each actor imports JAX, loads the VAE, compiles
def test_latents_encoded_by_vae_actors(cluster, vae_workdir, tmp_path):
    # 128 digits: two batches of 64 in two encode calls, one per actor; the second call's records
    # start at position 64, in shard 64 % 3 = 1 (one shape to compile, so one compile per actor).
    flags = ["--source=digits", "--limit=128", "--num_shards=3", f"--vae={vae_workdir}"]
    assert _prepare(tmp_path / "local", *flags) == 0
    assert _prepare(tmp_path / "ray", *flags, "--runner=ray") == 0
    header = _assert_same_shards(tmp_path / "local", tmp_path / "ray")
    assert header["kind"] == "latents" and header["num_records"] == 128 and header["vae"]["scaling_factor"] == 0.5
    record = shards.decode_record(_shard_records(str(tmp_path / "ray" / header["shards"][2]["file"]))[-1])
    assert record["latent"].shape == (8, 8, 4) and np.isfinite(record["latent"]).all()


def test_runner_flags_that_cannot_work(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    assert _prepare(out, "--source=digits", "--runner=spark") == 2
    assert _prepare(out, "--source=digits", "--ray_address=127.0.0.1:6379") == 2
    # No cluster at the address: one line within seconds (Ray itself retries for minutes).
    capsys.readouterr()
    assert _prepare(out, "--source=digits", "--runner=ray", "--ray_address=127.0.0.1:1") == 1
    err = capsys.readouterr().err.strip()
    assert "--ray_address=127.0.0.1:1: cannot connect" in err and "\n" not in err, err
    # Without Ray installed: the install command, before anything is read or written.
    import data_pipelines.cli

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "data_pipelines.cli.ray_runner")
    monkeypatch.delattr(data_pipelines.cli, "ray_runner")  # else `from data_pipelines.cli import` finds it there
    capsys.readouterr()
    assert _prepare(out, "--source=digits", "--runner=ray") == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err
    assert not os.path.exists(out)
