"""data_pipelines.cli.measure on tiny runs: the on/off tables are built from the right workdirs.

The full studies (2000- and 3000-step runs) are in BENCHMARKS.md; here both sides of each table are the
same tiny run, so the two columns must agree exactly (same weights, prompts and noise).
"""

import os
import re

import numpy as np
import pytest
from PIL import Image

from data_pipelines.cli import measure
from seedjax.eval.judges import stamps
from seedjax.main import main
from tests.runner import ROOT

pytestmark = pytest.mark.slow


def _tiny_run(tmp_path, config: str) -> str:
    workdir = str(tmp_path / config.split(".")[0])
    spec = os.path.join(ROOT, "experiments/seedream", config)
    assert main([f"--config={spec}", f"--workdir={workdir}", "--config.total_steps=4"]) == 0
    return workdir


def _percentages(line: str) -> list[str]:
    return re.findall(r"\d+\.\d%", line)


def test_defects_table_from_a_tiny_run(tmp_path, capsys, monkeypatch):
    # The 64x64 detector (trained and cached by test_eval_stamps) resizes 32x32 images itself;
    # this saves CI training a second one at the runs' size.
    default_detector = stamps.get_stamp_detector()
    monkeypatch.setattr(stamps, "get_stamp_detector", lambda size: default_detector)
    workdir = _tiny_run(tmp_path, "defect_aware.py:masking=on,variant=tiny")
    assert measure.main(["defects", f"--off={workdir}", f"--on={workdir}", "--num=16", "--no-append"]) == 0
    out = capsys.readouterr().out
    off = next(line for line in out.splitlines() if "without defect-aware" in line)
    on = next(line for line in out.splitlines() if "with defect-aware" in line)
    assert len(_percentages(off)) == 4 and _percentages(off) == _percentages(on)
    # 4 steps of batch 8 read at least 32 samples; the stamped-scene data drops some.
    kept, dropped = map(int, re.search(r"kept (\d+) samples and dropped (\d+)", out).groups())
    assert kept >= 32 and dropped > 0


def test_dual_axis_table_from_a_tiny_run(tmp_path, capsys):
    workdir = _tiny_run(tmp_path, "dual_axis.py:sampling=on,variant=tiny")
    grid = tmp_path / "grid.png"
    assert measure.main(["dual_axis", f"--off={workdir}", f"--on={workdir}", "--num=20", "--no-append",
                         f"--grid={grid}"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 4
    for row in rows:
        cells = _percentages(row)  # (uniform, dual-axis) for each of 3 checks
        assert len(cells) == 6 and cells[0::2] == cells[1::2]
    counts = [int(re.search(r"\((\d+)\)", row).group(1)) for row in rows]
    assert counts[0] + counts[1] == 20 and counts[2] + counts[3] == 20
    # Same run on both sides: the two halves of the grid are the same pixels.
    pixels = np.asarray(Image.open(grid))
    half = 6 * 26 * 3
    np.testing.assert_array_equal(pixels[:, :half], pixels[:, -half:])


def test_grid_puts_each_tail_digit_on_its_row_and_each_run_on_its_side(tmp_path):
    digit = np.array([5, 0, 9, 5, 1, 9, 9])
    off = np.full((7, 4, 4, 3), -1.0, np.float32)
    on = np.full((7, 4, 4, 3), 1.0, np.float32)
    off[3] = on[3] = 0.0  # the second prompt of digit 5 is grey in both runs
    measure.save_grid(str(tmp_path / "g.png"), off, on, digit, per_row=3, zoom=1)
    g = np.asarray(Image.open(tmp_path / "g.png")).astype(int)
    on_x = 3 * 6 + 2  # the `on` side starts after three tiles and the gap
    tile = lambda row, col, x0: g[row * 6 + 1, x0 + col * 6 + 1]
    assert g.shape == (5 * 6, 2 * 3 * 6 + 2, 3)
    assert (tile(0, 0, 0) == 0).all() and (tile(0, 1, 0) == 128).all() and (tile(0, 2, 0) == 0).all()
    assert (tile(0, 0, on_x) == 255).all() and (tile(0, 1, on_x) == 128).all()
    assert (tile(4, 0, on_x) == 255).all() and (tile(4, 1, on_x) == 255).all()  # digit 9, prompts 2 and 5
    assert (tile(1, 0, on_x) == 0).all()  # no prompt of digit 6: an empty tile


def test_rejects_a_folder_that_is_not_a_workdir(tmp_path, capsys):
    assert measure.main(["defects", f"--off={tmp_path}", f"--on={tmp_path}", "--no-append"]) == 2
    assert "not a seedjax workdir" in capsys.readouterr().err
