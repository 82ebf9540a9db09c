"""tests/runner.check_reference_losses, the end-to-end tests' guard against refactors changing results:
exact where the references were recorded, a stated tolerance elsewhere, and it must fail on a change."""

import json
import math

import pytest

from tests import runner


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """A one-run reference table in this environment, and a workdir whose metrics equal it."""
    rows = [{"step": 1, "loss": 0.5, "d_loss": 1.25}, {"step": 2, "loss": 0.25, "d_loss": 1.5}]
    table = tmp_path / "reference_losses.json"
    table.write_text(json.dumps({"run": rows, runner.ENVIRONMENT_KEY: runner.environment()}))
    monkeypatch.setattr(runner, "REFERENCE_LOSSES", str(table))
    workdir = tmp_path / "run"
    workdir.mkdir()

    def write(scale: float = 1.0, **metrics_extra):
        lines = [json.dumps({**row, "loss": row["loss"] * scale, "lr": 1e-3, **metrics_extra}) for row in rows]
        (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        return str(workdir)

    return table, write


def test_same_environment_is_exact(recorded):
    _, write = recorded
    runner.check_reference_losses("run", write())
    with pytest.raises(AssertionError, match="bit for bit"):
        runner.check_reference_losses("run", write(scale=math.nextafter(1.0, 2.0)))


def test_another_environment_gets_the_stated_tolerance_and_a_warning(recorded):
    table, write = recorded
    data = json.loads(table.read_text())
    data[runner.ENVIRONMENT_KEY]["cores"] = -1
    table.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="not the environment"):
        runner.check_reference_losses("run", write(scale=1 + runner.OTHER_ENVIRONMENT_RTOL / 2))
    with pytest.raises(AssertionError), pytest.warns(UserWarning):
        runner.check_reference_losses("run", write(scale=1 + 2 * runner.OTHER_ENVIRONMENT_RTOL))


def test_a_run_recorded_elsewhere_keeps_its_own_environment(recorded, monkeypatch):
    """Recording a run on another machine leaves the table's environment (and the other runs' exact
    check) alone; that run is exact where it was recorded and within the tolerance here."""
    table, write = recorded
    here = runner.environment()
    there = {**here, "cores": -1}
    monkeypatch.setenv("SEEDJAX_RECORD_LOSSES", "1")
    monkeypatch.setattr(runner, "environment", lambda: there)
    runner.check_reference_losses("added", write(scale=1.5))
    data = json.loads(table.read_text())
    assert data[runner.ENVIRONMENT_KEY] == here and data[runner.ELSEWHERE_KEY] == {"added": there}
    monkeypatch.delenv("SEEDJAX_RECORD_LOSSES")
    runner.check_reference_losses("added", write(scale=1.5))  # exact there
    with pytest.raises(AssertionError, match="bit for bit"):
        runner.check_reference_losses("added", write(scale=1.5 * math.nextafter(1.0, 2.0)))
    monkeypatch.setattr(runner, "environment", lambda: here)
    runner.check_reference_losses("run", write())  # the table's own runs: still exact here
    with pytest.raises(AssertionError, match="bit for bit"):
        runner.check_reference_losses("run", write(scale=math.nextafter(1.0, 2.0)))
    with pytest.warns(UserWarning, match="not the environment"):
        runner.check_reference_losses("added", write(scale=1.5 * (1 + runner.OTHER_ENVIRONMENT_RTOL / 2)))
    monkeypatch.setenv("SEEDJAX_RECORD_LOSSES", "1")
    runner.check_reference_losses("added", write(scale=1.5))  # recorded again here: no longer elsewhere
    assert runner.ELSEWHERE_KEY not in json.loads(table.read_text())


def test_a_missing_or_extra_loss_fails(recorded):
    _, write = recorded
    with pytest.raises(AssertionError):
        runner.check_reference_losses("run", write(g_loss=0.1))
    with pytest.raises(AssertionError, match="no reference losses"):
        runner.check_reference_losses("other", write())


def test_the_repository_table_names_the_environment_of_every_run():
    table = json.load(open(runner.REFERENCE_LOSSES))
    for name in (n for n in table if not n.startswith("_")):
        env = runner.recorded_environment(name, table)
        assert env.keys() == runner.environment().keys() and env["packages"]["jax"], name
    assert {"pretrain_tiny", "distill_tiny/adp", "latent_tiny/vae", "post_training_tiny/rlhf"} <= table.keys()
