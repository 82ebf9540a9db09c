"""The command-line contract: help, one-line exit 2 before any write, derived values after
overrides, --dry_run, and the pipeline's completion markers and signal forwarding."""

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import pytest

from seedjax import config as config_lib
from seedjax import pipeline
from seedjax.main import main
from tests.runner import ROOT, env_for

TINY = f"{ROOT}/experiments/quickstart/pretrain.py:tiny"
ENTRY_POINTS = ["seedjax.main", "seedjax.pipeline", "seedjax.tools.sample", "seedjax.tools.stream", "seedjax.tools.restore",
                "seedjax.tools.edit", "seedjax.tools.ode_pairs",
                "seedjax.tools.calibrate_paro", "seedjax.eval.report", "data_pipelines.cli.prepare",
                "data_pipelines.cli.report", "data_pipelines.cli.measure"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- help and flags


@pytest.mark.parametrize("module", ENTRY_POINTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_exits_0(module, flag, capsys):
    mod = importlib.import_module(module)
    assert mod.main([flag]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[0] == mod.__doc__.strip().splitlines()[0]
    assert out.err == ""


def test_help_from_a_real_process_exits_0():
    done = subprocess.run([sys.executable, "-m", "seedjax.main", "--help"], cwd=ROOT, env=env_for(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--dry_run" in done.stdout and "143" in done.stdout


# Arguments that satisfy each entry point's required flags, so that the unknown one is the error.
REQUIRED = {
    "seedjax.main": [f"--config={TINY}", "--workdir=W"],
    "seedjax.pipeline": ["--pipeline=P", "--workdir=W"],
    "seedjax.tools.sample": ["--workdir=W", "--prompt=a 3"],
    "seedjax.tools.stream": ["--workdir=W", "--prompt=a 3"],
    "seedjax.tools.restore": ["--workdir=W", "--input=I", "--out=O"],
    "seedjax.tools.edit": ["--workdir=W", "--image=I", "--instruction=make it red"],
    "seedjax.tools.ode_pairs": ["--workdir=W", "--init_from=I"],
    "seedjax.tools.calibrate_paro": ["--workdir=W", "--density=0.5"],
    "seedjax.eval.report": ["--workdir=W"],
    "data_pipelines.cli.prepare": ["--source=digits", "--out=W"],
    "data_pipelines.cli.report": [],
    "data_pipelines.cli.measure": ["defects", "--off=A", "--on=B"],
}


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_unknown_flag_exits_2_with_one_line(module, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert importlib.import_module(module).main([*REQUIRED[module], "--bogus=1"]) == 2
    prog = "seedjax" if module == "seedjax.main" else module
    assert f"{prog}: error: unknown flag '--bogus'" in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("module, argv, message", [
    ("seedjax.tools.sample", ["--workdir=W", "--prompt=a", "--num=many"], "argument --num: invalid int value"),
    ("seedjax.tools.calibrate_paro", ["--workdir=W"], "required: --density"),
    ("data_pipelines.cli.prepare", ["--source=digits", "--out=W", "--data.defects.enabled=ture"],
     "data.defects.enabled: expected a bool (true/false), got 'ture'"),
    ("data_pipelines.cli.prepare", ["--source=digits", "--out=W", "--data.defect.enabled=1"],
     "unknown data key 'data.defect'"),
    ("data_pipelines.cli.report", ["--data.dual_axis.alpha=much"], "data.dual_axis.alpha: expected a float"),
    ("data_pipelines.cli.measure", ["shapes", "--off=A", "--on=B"], "invalid choice: 'shapes'"),
])
def test_bad_values_exit_2_with_one_line(module, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert importlib.import_module(module).main(argv) == 2
    assert message in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


def test_override_value_may_follow_its_flag_and_flags_are_not_abbreviated(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main([f"--config={TINY}", f"--workdir={workdir}", "--dry_run", "--config.total_steps", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["total_steps"] == 7
    assert main([f"--config={TINY}", f"--work={workdir}", "--dry_run"]) == 2
    assert "unknown flag '--work'" in one_line_error(capsys)


# --------------------------------------------------------------------------- seedjax.main validation


@pytest.mark.parametrize("overrides, message", [
    (["--config.data.source=imagenet"], "config.data.source: unknown source 'imagenet'"),
    (["--config.data.source=folder", "--config.data.path=/nonexistent"], "config.data.path: '/nonexistent' does not exist"),
    (["--config.data.source=folder"], "config.data.path: source 'folder' needs an image folder"),
    (["--config.optimizer.name=adamww"], "config.optimizer.name: unknown optimizer 'adamww'"),
    (["--config.optimizer.schedule=cosin"], "config.optimizer.schedule: unknown schedule 'cosin'"),
    (["--config.data.channels=2"], "config.data.channels must be 1, 3 or -1"),
    (["--config.data.degradations.blur_prob=2"], "config.data.degradations.blur_prob: 2.0 is not a probability"),
    (["--config.data.source=edit_triples"], "config.data.image_size: edit_triples renders scenes of at least 24 px"),
    (["--config.optimizer.lrr=0.1"], "unknown config key 'config.optimizer.lrr'"),
    (["--config.total_steps=ten"], "config.total_steps: expected an int, got 'ten'"),
    (["--stop_at_step=-1"], "--stop_at_step must be >= 0"),
])
def test_bad_config_exits_2_before_the_workdir_is_touched(tmp_path, capsys, overrides, message):
    workdir = tmp_path / "run"
    assert main([f"--config={TINY}", f"--workdir={workdir}", *overrides]) == 2
    assert message in one_line_error(capsys)
    assert not workdir.exists()


def test_bad_variant_and_missing_workdir_exit_2(tmp_path, capsys):
    assert main([f"--config={ROOT}/experiments/quickstart/pretrain.py:huge", f"--workdir={tmp_path / 'w'}"]) == 2
    assert "unknown variant 'huge'" in one_line_error(capsys)
    assert main([f"--config={TINY}"]) == 2
    assert "--workdir is required" in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


def test_workdir_under_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main([f"--config={TINY}", f"--workdir={tmp_path / 'afile' / 'run'}"]) == 2
    assert "is a file" in one_line_error(capsys)
    assert main([f"--config={TINY}", f"--workdir={tmp_path / 'afile'}"]) == 2
    assert "not a directory" in one_line_error(capsys)
    assert (tmp_path / "afile").read_text() == "x"


# --------------------------------------------------------------------------- derived values


# What these configs resolved to before derived values were resolved after overrides
# (recorded from the earlier code): the resolve step must not change any of them.
RESOLVED_BEFORE = {
    "quickstart/pretrain.py": dict(in_channels=16, text_dim=96, pooled_dim=96, max_len=32),
    "quickstart/pretrain.py:tiny": dict(in_channels=16, text_dim=96, pooled_dim=96, max_len=32),
    "quickstart/latent_pretrain.py:tiny": dict(in_channels=16, text_dim=96, pooled_dim=96, max_len=32),
    "quickstart/distill_adp.py:tiny": dict(in_channels=16, text_dim=96, pooled_dim=96, max_len=32),
    "seedream/scenes_pretrain.py": dict(in_channels=48, text_dim=128, pooled_dim=128, max_len=48),
    "seedream/dual_axis.py:tiny": dict(in_channels=48, text_dim=128, pooled_dim=128, max_len=48),
    "quickstart/reward.py": dict(channels=1, image_size=32, max_text_len=32),
    "seedream/reward.py": dict(channels=3, image_size=32, max_text_len=64),
}


def _derived(cfg) -> dict:
    if "reward_model" in cfg:
        return {k: cfg.reward_model[k] for k in ("channels", "image_size", "max_text_len")}
    return dict(in_channels=cfg.model.in_channels, text_dim=cfg.model.text_dim, pooled_dim=cfg.model.pooled_dim,
                max_len=cfg.text.max_len)


@pytest.mark.parametrize("spec", sorted(RESOLVED_BEFORE))
def test_resolved_configs_are_unchanged(spec):
    path = f"{ROOT}/experiments/{spec}"
    cfg = config_lib.load_config(path)
    assert _derived(cfg) == RESOLVED_BEFORE[spec]
    # An override of something no value derives from changes that key only.
    other = config_lib.load_config(path, {"total_steps": "7"}).to_dict()
    assert other.pop("total_steps") == 7
    expected = cfg.to_dict()
    expected.pop("total_steps")
    assert other == expected


def test_derived_values_follow_the_overrides():
    cfg = config_lib.load_config(TINY, {"data.source": "folder", "data.path": "/x", "text.width": "64",
                                        "data.max_text_len": "40"})
    assert (cfg.model.in_channels, cfg.model.text_dim, cfg.model.pooled_dim, cfg.text.max_len) == (48, 64, 64, 40)
    assert config_lib.load_config(TINY, {"input.patch_size": "2"}).model.in_channels == 4
    # A derived value set on the command line is the user's choice.
    assert config_lib.load_config(TINY, {"data.channels": "3", "model.in_channels": "12"}).model.in_channels == 12
    # A value the file set otherwise (latents: the VAE's channels) does not follow the pixel rule.
    latent = f"{ROOT}/experiments/quickstart/latent_pretrain.py:tiny"
    assert config_lib.load_config(latent, {"data.channels": "3"}).model.in_channels == 16
    reward = config_lib.load_config(f"{ROOT}/experiments/quickstart/reward.py:tiny",
                                    {"data.image_size": "16", "data.path": "digit_scenes", "data.max_text_len": "48"})
    assert _derived(reward) == dict(channels=3, image_size=16, max_text_len=48)


# --------------------------------------------------------------------------- --dry_run


def test_dry_run_prints_config_and_mesh_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "run"
    code = main([f"--config={TINY}", f"--workdir={workdir}", "--dry_run", "--coordinator_address=10.0.0.1:1234",
                 "--num_processes=4", "--process_id=3", "--config.data.source=folder", f"--config.data.path={tmp_path}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    shown = json.loads(out.out)
    assert shown["config"]["model"]["in_channels"] == 48 and shown["config"]["data"]["source"] == "folder"
    assert shown["mesh"] == {"data": jax.device_count(), "fsdp": 1, "tensor": 1, "sequence": 1}
    assert shown["devices"] == jax.device_count()
    assert not workdir.exists() and os.listdir(tmp_path) == []
    assert jax.process_count() == 1  # jax.distributed was not started


def test_dry_run_checks_the_mesh(tmp_path, capsys):
    code = main([f"--config={TINY}", f"--workdir={tmp_path / 'run'}", "--dry_run", "--config.mesh.data=3"])
    assert code == 2
    assert "config.mesh" in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- seedjax.pipeline: input


def write_pipeline(tmp_path, stages: str) -> str:
    path = tmp_path / "pipe.py"
    path.write_text(f"def get_pipeline(arg=None):\n    return {stages}\n")
    return str(path)


TWO_STAGES = f"[dict(name='a', config='{TINY}'), dict(name='b', config='{TINY}', init_from='a')]"


@pytest.mark.parametrize("argv, message", [
    (["--bogus=1"], "unknown flag '--bogus'"),
    (["--only=pretrian"], "--only: unknown stage 'pretrian'; the stages are pretrain, sft, reward, rlhf"),
    (["--config.optimizer.lrr=5"], "unknown config key 'config.optimizer.lrr': no stage to run has it"),
    (["--only=reward", "--config.rlhf.num_steps=3"], "unknown config key 'config.rlhf.num_steps'"),
    (["--config.optimizer.lr=fast"], "config.optimizer.lr: expected a float, got 'fast'"),
])
def test_pipeline_bad_input_exits_2_and_runs_nothing(tmp_path, capsys, argv, message):
    root = tmp_path / "root"
    code = pipeline.main([f"--pipeline={ROOT}/experiments/quickstart/pipeline.py:tiny", f"--workdir={root}", *argv])
    assert code == 2
    assert message in one_line_error(capsys)
    assert not root.exists()


def test_pipeline_bad_file_exits_2(tmp_path, capsys):
    assert pipeline.main([f"--pipeline={tmp_path}/none.py", f"--workdir={tmp_path}/root"]) == 2
    assert "does not exist" in one_line_error(capsys)
    bad = write_pipeline(tmp_path, "[dict(name='b', config='x', init_from='a')]")
    assert pipeline.main([f"--pipeline={bad}", f"--workdir={tmp_path}/root"]) == 2
    assert "is not an earlier stage" in one_line_error(capsys)


# --------------------------------------------------------------------------- seedjax.pipeline: markers


FAKE_STAGE = textwrap.dedent("""\
    import json, os, sys
    workdir, mode, log = sys.argv[1:4]
    with open(log, "a") as f:
        f.write(os.path.basename(workdir) + "\\n")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"total_steps": 3}, f)
    if mode == "finish":
        with open(os.path.join(workdir, "done.json"), "w") as f:
            json.dump({"step": 3, "total_steps": 3, "stage": "pretrain"}, f)
    sys.exit(int(mode) if mode.isdigit() else 0)
""")


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """Run each stage as a tiny script whose behaviour is set per stage name; returns the run log."""
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE)
    log = tmp_path / "ran.txt"
    modes = {}

    def command(stage, root, overrides):
        return [sys.executable, str(script), os.path.join(root, stage["name"]), modes[stage["name"]], str(log)]

    monkeypatch.setattr(pipeline, "stage_command", command)
    return modes, lambda: log.read_text().split() if log.exists() else []


def test_pipeline_runs_the_next_stage_only_after_done_json(tmp_path, capsys, fake_stages):
    modes, ran = fake_stages
    pipe = write_pipeline(tmp_path, TWO_STAGES)
    modes.update(a="finish", b="finish")
    assert pipeline.main([f"--pipeline={pipe}", f"--workdir={tmp_path}/root"]) == 0
    assert ran() == ["a", "b"]
    assert set(json.loads((tmp_path / "root" / "pipeline_timings.json").read_text())) == {"a", "b"}

    modes.update(a="stop")  # exits 0 without the marker, as after --stop_at_step
    (tmp_path / "root" / "a" / "done.json").unlink()
    capsys.readouterr()
    assert pipeline.main([f"--pipeline={pipe}", f"--workdir={tmp_path}/root"]) == 1
    assert ran() == ["a", "b", "a"]
    err = capsys.readouterr().err
    assert "stage a exited 0 but" in err and "holds no done.json" in err


def test_pipeline_exits_with_the_failing_stage_code(tmp_path, capsys, fake_stages):
    modes, ran = fake_stages
    modes.update(a="143", b="finish")
    pipe = write_pipeline(tmp_path, TWO_STAGES)
    assert pipeline.main([f"--pipeline={pipe}", f"--workdir={tmp_path}/root"]) == 143
    assert ran() == ["a"]
    assert "stage a exited with code 143" in capsys.readouterr().err


def test_pipeline_marks_tool_steps_done_and_skips_them_on_rerun(tmp_path, fake_stages):
    modes, ran = fake_stages
    modes.update(tool="0", b="finish")
    pipe = write_pipeline(tmp_path, f"[dict(name='tool', module='x.y', args=dict(num=2)), "
                                    f"dict(name='b', config='{TINY}')]")
    assert pipeline.main([f"--pipeline={pipe}", f"--workdir={tmp_path}/root"]) == 0
    done = json.loads((tmp_path / "root" / "tool" / "done.json").read_text())
    assert done["stage"] == "tool"
    assert pipeline.main([f"--pipeline={pipe}", f"--workdir={tmp_path}/root"]) == 0
    assert ran() == ["tool", "b", "b"]


SLEEPY_TOOL = textwrap.dedent("""\
    import os, signal, sys, time
    workdir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
    os.makedirs(workdir, exist_ok=True)
    def stop(signum, frame):
        open(os.path.join(workdir, "signal.txt"), "w").write(str(signum))
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    open(os.path.join(workdir, "started"), "w").close()
    time.sleep(120)
""")


def test_pipeline_forwards_sigterm_and_exits_with_the_stage_code(tmp_path):
    (tmp_path / "sleepy_tool.py").write_text(SLEEPY_TOOL)
    pipe = write_pipeline(tmp_path, "[dict(name='first', module='sleepy_tool'), dict(name='second', module='sleepy_tool')]")
    env = env_for(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    proc = subprocess.Popen([sys.executable, "-m", "seedjax.pipeline", f"--pipeline={pipe}", f"--workdir={tmp_path}/root"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = tmp_path / "root" / "first" / "started"
    deadline = time.time() + 120
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert started.exists(), proc.communicate(timeout=10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert (tmp_path / "root" / "first" / "signal.txt").read_text() == str(int(signal.SIGTERM))
    assert not (tmp_path / "root" / "second").exists()
    assert not (tmp_path / "root" / "first" / "done.json").exists()
    assert "stage first exited with code 143" in err


def test_int_list_flags_take_integers_at_least_the_bound():
    from seedjax import cli

    assert cli.int_list("seeds", "0, 1,2", 0) == [0, 1, 2]
    assert cli.int_list("seeds", "3,3", 0) == [3, 3]
    for text, least, distinct in (("", 0, False), ("1,,2", 0, False), ("x", 0, False), ("0,2", 1, False),
                                  ("-1", 0, False), ("2,2", 0, True), ("1.5", 0, False)):
        with pytest.raises(cli.UsageError, match=r"^--seeds: expected .*integers >= \d"):
            cli.int_list("seeds", text, least, distinct)
