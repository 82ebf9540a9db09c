"""benchmarks.restore_quality on the tiny SeedVR chain (experiments/seedvr/pipeline.py:tiny: a multi-step
restoration run and its one-step adversarial stage, 16x16 clips of 2 frames), built once for the module.

The benchmark runs once (a module fixture) on a handful of items: its tables must have the rows and
window rules asked for, and the degraded input's PSNR must be what numpy computes, in uint8 units, on
clips rebuilt here from the held-out renderings and the run's own degradation draws.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import restore_quality as rq
from data_pipelines.core.config import degradation_config
from data_pipelines.sources import moving_digits
from data_pipelines.techniques import degradations
from seedjax.inference.bundle import run_config
from tests.runner import ROOT, env_for

pytestmark = pytest.mark.slow(minutes=5)  # the chain's two tiny stages, then one benchmark run

F, S = 2, 16  # the tiny variant's clip length and frame size
SEEDS = (0, 1)
FLAGS = ("--clips=2", "--photos=3", f"--seeds={SEEDS[0]},{SEEDS[1]}", "--steps=2", "--rules=adaptive,fixed",
         "--rounds=2")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("seedvr") / "rp")
    cmd = [sys.executable, "-m", "seedjax.pipeline", "--pipeline=experiments/seedvr/pipeline.py:tiny",
           f"--workdir={workdir}", "--config.sample_every=0", "--config.eval_every=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"multi": os.path.join(workdir, "restore"), "one": os.path.join(workdir, "restore_adversarial")}


@pytest.fixture(scope="module")
def printed(chain, tmp_path_factory):
    """(stdout, the text appended to BENCHMARKS.md) of one run of the benchmark."""
    target, out = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md", io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out):
        env.setenv("SEEDJAX_BENCHMARKS_MD", str(target))
        assert rq.main([f"--multi={chain['multi']}", f"--one={chain['one']}", *FLAGS, "--append",
                        "--max_load=1000"]) == 0
    return out.getvalue(), target.read_text()


def rows(text: str) -> list[list[str]]:
    """The cells of every data row of the markdown tables."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if re.match(r"\| (digits|photos) ", line)]


def number(cell: str) -> float:
    return float(cell.split("±")[0])


def numpy_psnr(clean: np.ndarray, degraded: np.ndarray) -> np.ndarray:
    """[N] PSNR of uint8 clips [N, F, H, W, C]: the mean over frames of 10 log10(255^2 / MSE)."""
    mse = ((clean.astype(np.float64) - degraded.astype(np.float64)) ** 2).mean(axis=(2, 3, 4))
    return (10.0 * np.log10(255.0 ** 2 / mse)).mean(axis=1)


def test_zoom_tiles_and_photo_crops():
    assert [rq.zoom_tile(j) for j in range(6)] == [(1, 0, 0), (2, 0, 0), (2, 0, 1), (2, 1, 0), (2, 1, 1), (3, 0, 0)]
    crops = rq.photo_crops(len(rq.PHOTOS) + 1, 20, 32)
    assert crops.shape == (len(rq.PHOTOS) + 1, 1, 20, 32, 3) and crops.dtype == np.uint8
    assert np.abs(crops[0].astype(int) - crops[-1]).mean() > 5  # the first photo whole, then its top-left quarter
    assert rq.mean_se([np.array([1.0, 3.0]), np.array([3.0, 5.0])]) == (3.0, 1.0)  # items 2 and 4


def test_tables_have_every_data_set_method_and_window_rule(printed):
    out, appended = printed
    assert appended.strip() in out and "Command: `python -m benchmarks.restore_quality" in appended
    assert "perceptual distance on random-VGG features" in out and "Machine:" in out
    table = rows(out)
    assert [r[:4] for r in table[:6]] == [
        [f"digits {F}x{S}x{S}", "—", "degraded input", "—"],
        [f"digits {F}x{S}x{S}", "adaptive (the run's)", "multi-step, 2 steps", "2"],
        [f"digits {F}x{S}x{S}", "adaptive (the run's)", "one-step", "1"],
        [f"photos 1x{S}x{S}", "—", "degraded input", "—"],
        [f"photos 1x{S}x{S}", "adaptive (the run's)", "multi-step, 2 steps", "2"],
        [f"photos 1x{S}x{S}", "adaptive (the run's)", "one-step", "1"]]
    double = table[6:]
    assert [r[0] for r in double] == [f"digits {F}x{2 * S}x{2 * S}"] * 5 + [f"photos 1x{2 * S}x{2 * S}"] * 5 + \
        ["photos 1x20x32"] * 5
    # On a square 2x grid SeedVR's fixed windows are SeedVR2's adaptive ones: computed once.
    assert [r[1] for r in double[:5]] == ["—"] + ["adaptive (the run's)"] * 2 + ["fixed (= adaptive)"] * 2
    assert [r[1] for r in double[10:]] == ["—"] + ["adaptive (the run's)"] * 2 + ["fixed"] * 2
    assert double[3][4:] == double[1][4:] and double[4][4:] == double[2][4:]
    for r in table:
        if r[2] == "degraded input":
            assert r[7:] == ["—"] * 3
            continue
        assert -1 <= number(r[5]) <= 1 and number(r[6]) >= 0 and float(r[8]) > 0, r
        if r[2] == "multi-step, 2 steps":  # the reference of ΔPSNR and the speed-up
            assert number(r[7]) == 0 and r[9] == "1.0x", r
    assert len(re.findall(r"^- (digits|photos) .*: goal (met|not met)$", out, re.M)) == 2


def test_degraded_input_psnr_is_numpys_on_the_same_draws(chain, printed):
    config = degradation_config(run_config(chain["multi"])[1].data)
    clean = np.stack([np.rint(moving_digits.held_out_clip(i, F, S, 0)["video"] * 255).astype(np.uint8)
                      for i in range(2)])
    photos = rq.photo_crops(3, S, S)
    want = {}
    for name, items, video in (("digits", clean, True), ("photos", photos, False)):
        per_seed = []
        for seed in SEEDS:
            degraded = np.stack([degradations.apply(
                x if video else x[0], degradations.sample_params(config, np.random.default_rng([seed, i]), video=video))
                .reshape(x.shape) for i, x in enumerate(items)])
            assert np.abs(degraded.astype(int) - items).max() > 0
            per_seed.append(numpy_psnr(items, degraded))
        want[name] = np.mean(per_seed)
    got = {r[0].split()[0]: number(r[4]) for r in rows(printed[0])[:6] if r[2] == "degraded input"}
    assert got == pytest.approx(want, abs=0.0051)


def test_bad_flags_and_runs_exit_2_with_one_line(chain, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads(open(os.path.join(chain["multi"], "config.json")).read())
    config["diffusion"]["restore"] = False
    (other / "config.json").write_text(json.dumps(config))
    runs = [f"--multi={chain['multi']}", f"--one={chain['one']}"]
    cases = {
        (f"--multi={chain['multi']}",): "--one",
        (*runs, "--seeds=0"): "at least two seeds",
        (*runs, "--seeds=0,0"): "--seeds",
        (*runs, "--steps=0,50"): "--steps",
        (*runs, "--rules=adaptive,wide"): "--rules",
        (*runs, "--clips=0"): "--clips",
        (*runs, f"--vgg={tmp_path / 'vgg.safetensors'}"): "--vgg",
        (f"--multi={tmp_path / 'missing'}", f"--one={chain['one']}"): "no config.json",
        (f"--multi={other}", f"--one={chain['one']}"): "not a pixel-space restoration run",
    }
    for flags, message in cases.items():
        assert rq.main(list(flags)) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (flags, err)
