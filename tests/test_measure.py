"""data_pipelines.measure on tiny runs: the on/off tables are built from the right workdirs.

The full studies (2000-step runs) are in BENCHMARKS.md; here both sides of each table are the
same tiny run, so the two columns must agree exactly (same weights, prompts and noise).
"""

import os
import re

import pytest

from data_pipelines import measure
from seedjax.eval import stamps
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
    assert measure.main(["dual_axis", f"--off={workdir}", f"--on={workdir}", "--num=20", "--no-append"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 4
    for row in rows:
        cells = _percentages(row)  # (uniform, dual-axis) for each of 3 checks
        assert len(cells) == 6 and cells[0::2] == cells[1::2]
    counts = [int(re.search(r"\((\d+)\)", row).group(1)) for row in rows]
    assert counts[0] + counts[1] == 20 and counts[2] + counts[3] == 20


def test_rejects_a_folder_that_is_not_a_workdir(tmp_path, capsys):
    assert measure.main(["defects", f"--off={tmp_path}", f"--on={tmp_path}", "--no-append"]) == 2
    assert "not a seedjax workdir" in capsys.readouterr().err
