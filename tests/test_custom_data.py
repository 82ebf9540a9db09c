"""Training on your own images: experiments/custom/ on a folder of captioned photographs.

The folder holds crops of scikit-image's bundled photographs (astronaut, coffee, cat, rocket)
with same-name .txt captions, one corrupt file and one image without a caption.
`folder_pretrain.py:tiny` and `folder_vae.py:tiny` run through `python -m seedjax.main` as a
user runs them (side by side, one module fixture); then what must hold: both finish, write
sample grids, count the two unusable files, the pretraining run's evaluation reports image
statistics and no digit-classifier number, and the VAE's reports its reconstruction PSNR. The
README's commands for your own images resolve (`--dry_run`) to the data they name.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.runner import ROOT, env_for, read_metrics

PHOTOS = {"astronaut": "an astronaut in a white suit", "coffee": "a cup of coffee on a saucer",
          "chelsea": "a tabby cat", "rocket": "a rocket on its launch pad"}
DIGIT_KEYS = ("prompt_accuracy", "eval/frechet_distance", "classifier", "scene_")  # the digit judges' metrics


def make_folder(root: str) -> str:
    """Captioned crops (one in a subfolder), a corrupt image and an image without a caption."""
    import skimage.data
    from PIL import Image

    os.makedirs(os.path.join(root, "more"))
    for name, caption in PHOTOS.items():
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        for k, (y, x) in enumerate([(0, 0), (h // 3, w // 3), (h // 2, w // 2)]):
            stem = os.path.join(root, "more" if k == 2 else "", f"{name}_{k}")
            Image.fromarray(photo[y:y + h // 2, x:x + w // 2]).save(stem + ".png")
            with open(stem + ".txt", "w") as f:
                f.write(f"{caption}, detail {k}")
    with open(os.path.join(root, "corrupt.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not an image")
    with open(os.path.join(root, "corrupt.txt"), "w") as f:
        f.write("a file that cannot be decoded")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(os.path.join(root, "uncaptioned.png"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(str(tmp_path_factory.mktemp("photos")))


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    """{'pretrain': workdir, 'vae': workdir}: the two tiny runs, started together."""
    root = str(tmp_path_factory.mktemp("runs"))
    env = env_for(1)
    procs = {}
    for name, config in [("pretrain", "folder_pretrain.py"), ("vae", "folder_vae.py")]:
        workdir = os.path.join(root, name)
        cmd = [sys.executable, "-m", "seedjax.main", f"--config=experiments/custom/{config}:tiny,path={folder}",
               f"--workdir={workdir}"]
        procs[name] = (workdir, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True))
    out = {}
    for name, (workdir, proc) in procs.items():
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: {stderr[-4000:]}"
        out[name] = workdir
    return out


def test_folder_pretrain_samples_and_reports_no_digit_metrics(runs):
    from PIL import Image

    workdir = runs["pretrain"]
    rows = read_metrics(workdir)
    train = [r for r in rows if "loss" in r]
    assert train[-1]["step"] == 10 and all(math.isfinite(r["loss"]) for r in train)
    # 4 samples of 32x32 in a 2x2 grid with 2-pixel padding.
    with Image.open(os.path.join(workdir, "samples", "step_10.png")) as grid:
        assert grid.size == (2 * (32 + 2) + 2,) * 2
    # Evaluation ran (image_folder: statistics against the real held-out images, its timing) and
    # reported nothing of the digit classifier.
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert evals and evals[-1]["step"] == 10 and "eval/seconds_per_image" in evals[-1]
    assert math.isfinite(evals[-1]["eval/pixel_frechet_distance"]) and 0 <= evals[-1]["eval/channel_mean_gap"] <= 2
    keys = {k for r in rows for k in r}
    assert not [k for k in keys if any(d in k for d in DIGIT_KEYS)], sorted(keys)
    assert os.path.isfile(os.path.join(workdir, "done.json"))


def test_unusable_files_are_skipped_and_counted(runs):
    for workdir in runs.values():
        last = [r for r in read_metrics(workdir) if "loss" in r][-1]
        assert last["data/scan_skipped_unreadable_image"] == 1
        assert last["data/scan_skipped_missing_caption"] == 1


def test_folder_vae_reports_reconstruction_psnr(runs):
    workdir = runs["vae"]
    rows = read_metrics(workdir)
    evals = [r for r in rows if "eval/psnr" in r]
    assert evals and evals[-1]["step"] == 10
    assert 0.0 < evals[-1]["eval/psnr"] < 100.0 and math.isfinite(evals[-1]["eval/ssim"])
    assert os.path.isfile(os.path.join(workdir, "samples", "step_10.png"))
    keys = {k for r in rows for k in r}
    assert not [k for k in keys if any(d in k for d in DIGIT_KEYS)], sorted(keys)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    assert config["data"]["source"] == "folder" and config["vae"]["model"]["in_channels"] == 3


# --------------------------------------------------------------------------- which metrics apply


class FakeClassifier:
    test_accuracy = 0.99

    def predict(self, images):
        return np.zeros(len(images), np.int64)

    def features(self, images):
        return np.asarray(images, np.float64).reshape(len(images), -1)[:, :4] + np.arange(len(images))[:, None]


def test_digit_metrics_only_on_digit_data(monkeypatch):
    import ml_collections

    import data_pipelines
    from seedjax.eval import samples
    from seedjax.eval.judges import classifier

    def cfg(source):
        c = data_pipelines.default_config()
        c.source = source
        return c

    labelled = {"label": np.array([3, 0, 7]), "image": np.zeros((3, 8, 8, 1))}
    unlabelled = {"label": np.array([-1, -1, -1]), "image": np.zeros((3, 8, 8, 3))}
    scenes = {"label": np.array([-1, -1, -1]), "scene_digit": np.zeros((3, 3), np.int32)}
    assert samples.is_digit_data(labelled, cfg("digits")) and samples.is_digit_data(scenes, cfg("digit_scenes"))
    assert not samples.is_digit_data(labelled, cfg("folder")) and not samples.is_digit_data(unlabelled, cfg("jsonl"))
    # Shards (and callers without a data config) go by the labels their records carry.
    assert samples.is_digit_data(labelled, cfg("shards")) and samples.is_digit_data(scenes)
    assert not samples.is_digit_data(unlabelled, cfg("shards")) and not samples.is_digit_data(unlabelled)
    mixture = cfg("digits")
    mixture.mixture = ml_collections.ConfigDict({"mine": {"source": "folder", "path": "x"}})
    assert not samples.is_digit_data(unlabelled, mixture)

    made = []
    monkeypatch.setattr(classifier, "get_classifier", lambda size: made.append(size) or FakeClassifier())
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 1))
    assert samples.score_images(images, unlabelled, 8) == {} and not made  # no classifier is even built
    assert samples.score_images(images, labelled, 8, digit_data=False) == {} and not made
    scored = samples.score_images(images, labelled, 8)
    assert made == [8] and scored["prompt_accuracy"] == pytest.approx(1 / 3)
    assert {"classifier_test_accuracy", "frechet_distance"} <= set(scored)


# --------------------------------------------------------------------------- configs and README


def test_configs_check_their_args():
    from seedjax.config import ConfigError, load_config

    jsonl = load_config("experiments/custom/folder_pretrain.py:path=/x/train.jsonl,size=48")
    assert jsonl.data.source == "jsonl" and jsonl.data.image_size == 48 and jsonl.model.in_channels == 8 * 8 * 3
    base = load_config("experiments/custom/folder_pretrain.py:variant=base")
    assert base.input.patch_size == 16 and base.model.in_channels == 16 * 16 * 3 and base.mesh.fsdp == -1
    latent = load_config("experiments/custom/folder_latent_pretrain.py:tiny")
    assert latent.input.key == "latent" and latent.input.patch_size == 1 and latent.model.in_channels == 4
    assert latent.data.source == "shards" and latent.model.prediction == "velocity"
    for bad in ["experiments/custom/folder_pretrain.py:size=50", "experiments/custom/folder_pretrain.py:huge",
                "experiments/custom/folder_vae.py:factor=6", "experiments/custom/folder_pretrain.py:source=s3"]:
        with pytest.raises(ConfigError):
            load_config(bad)


def readme_commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("## Train on your own images\n")
    section = text[start:text.index("\n## ", start + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("python -m")]


def test_readme_commands_resolve_to_the_data_they_name(folder, tmp_path):
    from seedjax.config import load_config
    from seedjax.pipeline import load_pipeline

    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"path": os.path.join(folder, "coffee_0.png"), "caption": "coffee"}) + "\n")
    paths = {"/data/images": folder, "/data/train.jsonl": str(manifest)}
    commands = readme_commands()
    assert len(commands) == 4
    for command in commands:
        for shown, real in paths.items():
            command = command.replace(shown, real)
        argv = shlex.split(command)
        spec = argv[3].split("=", 1)[1]
        if argv[2] == "seedjax.pipeline":
            stages = load_pipeline(spec)
            assert [s["name"] for s in stages] == ["vae", "latents", "latent_pretrain"]
            assert stages[1]["args"]["path"] == folder and load_config(stages[0]["config"]).data.path == folder
            continue
        workdir = str(tmp_path / "never_created")
        args = [a if not a.startswith("--workdir=") else f"--workdir={workdir}" for a in argv[3:]]
        proc = subprocess.run([sys.executable, "-m", "seedjax.main", *args, "--dry_run"], cwd=ROOT, env=env_for(1),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not os.path.exists(workdir)
        data = json.loads(proc.stdout[proc.stdout.index("{"):])["config"]["data"]
        expected = str(manifest) if "jsonl" in command else folder
        assert data["path"] == expected and data["source"] == ("jsonl" if "jsonl" in command else "folder")
