"""The video quickstart end to end (experiments/seedance/t2v.py:tiny), as users run it: joint
text-to-image + text-to-video batches, GIF sample grids and the video judges at the end.

The same run on 8 fake devices with the frames split over `mesh.sequence=4` (and the batch
over `mesh.data=2`) must log the same losses within 1e-4; the sampling tool then writes a
multi-shot, image-to-video clip from the 1-device run's checkpoint.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.runner import env_for, losses, read_metrics, run_main

CONFIG = "experiments/seedance/t2v.py:tiny"


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The reference run (its judges are left to the mesh run, which runs everything a user does)."""
    workdir = str(tmp_path_factory.mktemp("t2v_tiny"))
    proc = run_main(CONFIG, workdir, "log_every=1", "eval_every=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def _check_samples(workdir: str) -> None:
    with Image.open(os.path.join(workdir, "samples", "step_12.gif")) as image:
        assert image.n_frames == 4  # the tiny variant's clips


@pytest.mark.slow
def test_video_quickstart_on_a_sequence_mesh_logs_the_same_losses(one_device, tmp_path):
    _check_samples(one_device)
    proc = run_main(CONFIG, str(tmp_path), "log_every=1", "mesh.data=2", "mesh.sequence=4", devices=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'sequence': 4" in proc.stderr
    _check_samples(str(tmp_path))
    evals = [row for row in read_metrics(str(tmp_path)) if "eval/video/motion_accuracy" in row]
    assert evals and {"eval/video/frame_accuracy", "eval/video/temporal_consistency"} <= set(evals[-1])
    want, got = losses(one_device), losses(str(tmp_path))
    assert sorted(want) == sorted(got) == list(range(1, 13))  # both buckets (1 and 4 frames) were trained
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_sample_tool_writes_a_multishot_image_to_video_clip(one_device, tmp_path):
    import subprocess
    import sys

    first = tmp_path / "first.png"
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(first)
    out = tmp_path / "clip.gif"
    cmd = [sys.executable, "-m", "seedjax.tools.sample", f"--workdir={one_device}", "--num=2", "--frames=6",
           "--prompt=shot 1: a red 3 moving left; shot 2: a blue 5 moving up", f"--first_frame={first}", f"--out={out}"]
    proc = subprocess.run(cmd, env=env_for(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6-frame clip" in proc.stdout
    with Image.open(out) as clip:
        assert clip.n_frames == 6
    assert (tmp_path / "clip_frames.png").exists()
    bad = subprocess.run([*cmd[:-1], f"--out={tmp_path / 'x.gif'}", "--first_frame=/nonexistent.png"], env=env_for(1),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--first_frame" in bad.stderr and not (tmp_path / "x.gif").exists()
