"""benchmarks.protocol (load check before appending, machine header, interleaved timing) and
benchmarks/accelerator.sh (argument handling, dry run, no-GPU exit) without running a benchmark."""

import glob
import os
import re
import subprocess
import sys
import types

import pytest

from benchmarks import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator.sh")


@pytest.fixture(autouse=True)
def never_the_real_file(tmp_path, monkeypatch):
    """Whatever a test does, an append without a path lands in a temporary file."""
    monkeypatch.setenv("SEEDJAX_BENCHMARKS_MD", str(tmp_path / "redirected.md"))
    monkeypatch.setattr(protocol, "BENCHMARKS_MD", str(tmp_path / "default.md"))


# --------------------------------------------------------------------------- append


def test_append_refuses_above_the_threshold_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("earlier results\n")
    assert protocol.append("| a | b |\n", load_before=2.5, max_load=1.0, path=str(path)) is False
    assert path.read_text() == "earlier results\n"
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "not appended" in lines[0] and "2.50" in lines[0] and "--max_load=1" in lines[0]


def test_append_writes_at_or_below_the_threshold(tmp_path, capsys):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("earlier\n")
    assert protocol.append("| first |", load_before=0.4, max_load=1.0, path=str(path)) is True
    assert protocol.append("| second |\n", load_before=1.0, max_load=1.0, path=str(path)) is True  # at most
    assert path.read_text() == "earlier\n| first |\n| second |\n"
    assert capsys.readouterr().err == ""


def test_append_default_threshold_and_custom_one(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    assert protocol.DEFAULT_MAX_LOAD == 1.0
    assert protocol.append("x", load_before=1.01, path=str(path)) is False
    assert not path.exists()
    assert protocol.append("x", load_before=3.0, max_load=4.0, path=str(path)) is True
    assert path.read_text() == "x\n"


def test_no_append_writes_nothing_and_says_nothing(tmp_path, capsys):
    path = tmp_path / "BENCHMARKS.md"
    assert protocol.append("x", load_before=0.0, no_append=True, path=str(path)) is False
    assert protocol.append("x", load_before=9.0, no_append=True, path=str(path)) is False
    assert not path.exists()
    assert capsys.readouterr().err == ""


def test_unreadable_load_refuses(tmp_path, capsys):
    path = tmp_path / "BENCHMARKS.md"
    assert protocol.append("x", load_before=float("nan"), path=str(path)) is False
    assert not path.exists()
    assert "could not be read" in capsys.readouterr().err


def test_append_without_path_follows_the_environment(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere.md"
    monkeypatch.setenv("SEEDJAX_BENCHMARKS_MD", str(target))
    assert protocol.append("row", load_before=0.0) is True
    assert target.read_text() == "row\n"
    monkeypatch.delenv("SEEDJAX_BENCHMARKS_MD")
    assert protocol.target_path() == protocol.BENCHMARKS_MD  # the fixture's temporary default


def test_begin_warns_at_once_when_the_table_will_not_be_appended(monkeypatch, capsys):
    monkeypatch.setattr(protocol, "load_average", lambda: 2.0)
    assert protocol.begin(max_load=1.0) == 2.0
    assert "will not append" in capsys.readouterr().err
    assert protocol.begin(max_load=3.0) == 2.0
    assert protocol.begin(max_load=1.0, no_append=True) == 2.0
    assert capsys.readouterr().err == ""


def test_max_load_flag():
    import argparse

    parser = argparse.ArgumentParser()
    protocol.add_max_load(parser)
    assert parser.parse_args([]).max_load == 1.0
    assert parser.parse_args(["--max_load=2.5"]).max_load == 2.5


def test_every_appending_benchmark_goes_through_the_protocol():
    """No benchmark writes BENCHMARKS.md itself; each one that appends has --max_load."""
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")):
        name = os.path.basename(path)
        if name in ("protocol.py", "__init__.py"):
            continue
        source = open(path).read()
        assert not re.search(r"BENCHMARKS\.md\"\)?, \"a\"", source), f"{name} appends by itself"
        assert "protocol.append(" in source, f"{name} does not use protocol.append"
        assert "add_max_load" in source or "--max_load" in source, f"{name} has no --max_load"


# --------------------------------------------------------------------------- header


def test_machine_header_names_load_threads_and_machine(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    fake_torch = types.SimpleNamespace(get_num_threads=lambda: 5, get_num_interop_threads=lambda: 7)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    header = protocol.machine_header(0.25, 1.75)
    assert "load average 0.25 before, 1.75 after" in header
    assert f"{os.cpu_count()} cores" in header
    assert "XLA_FLAGS=--xla_cpu_multi_thread_eigen=false" in header and "XLA CPU threads 1" in header
    assert "torch intra-op 5, inter-op 7" in header
    assert "OMP_NUM_THREADS=3" in header and "MKL_NUM_THREADS=unset" in header
    assert re.match(r"\d{4}-\d\d-\d\d, ", header)


def test_machine_header_without_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    header = protocol.machine_header(0.5)  # the load after is read now
    assert "torch" not in header and "XLA_FLAGS=unset" in header
    assert re.search(r"0\.50 before, \d+\.\d\d after", header)


# --------------------------------------------------------------------------- interleave


def fake_arms(durations: dict[str, list[float]]):
    """Arms that record their calls and advance a fake clock by their next duration."""
    now, calls = [0.0], []

    def arm(name):
        def call():
            calls.append(name)
            now[0] += durations[name].pop(0)
        return call

    return {name: arm(name) for name in durations}, calls, (lambda: now[0])


def test_interleave_alternates_and_excludes_the_warmup():
    arms, calls, clock = fake_arms({"A": [100.0, 3.0, 1.0, 2.0, 5.0], "B": [200.0, 10.0, 40.0, 20.0, 30.0]})
    stats = protocol.interleave(arms, rounds=4, warmup=1, clock=clock)
    assert calls == ["A", "B"] * 5
    assert stats["A"]["times"] == [3.0, 1.0, 2.0, 5.0]
    assert stats["B"]["times"] == [10.0, 40.0, 20.0, 30.0]
    assert (stats["A"]["median"], stats["A"]["min"], stats["A"]["max"]) == (2.5, 1.0, 5.0)
    assert (stats["B"]["median"], stats["B"]["min"], stats["B"]["max"]) == (25.0, 10.0, 40.0)
    assert list(stats) == ["A", "B"]


def test_interleave_three_arms_odd_rounds_no_warmup():
    arms, calls, clock = fake_arms({"x": [1.0, 9.0, 5.0], "y": [2.0, 2.0, 8.0], "z": [7.0, 3.0, 3.0]})
    stats = protocol.interleave(arms, rounds=3, warmup=0, clock=clock)
    assert calls == ["x", "y", "z"] * 3
    assert [stats[n]["median"] for n in "xyz"] == [5.0, 2.0, 3.0]
    assert [(stats[n]["min"], stats[n]["max"]) for n in "xyz"] == [(1.0, 9.0), (2.0, 8.0), (3.0, 7.0)]
    assert protocol.spread(stats["x"]) == "5.0000 (1.0000-9.0000)"


def test_interleave_in_blocks_times_per_call():
    arms, calls, clock = fake_arms({"A": [9.0, 9.0, 1.0, 3.0, 2.0, 2.0], "B": [8.0, 8.0, 4.0, 6.0, 10.0, 20.0]})
    stats = protocol.interleave(arms, rounds=2, warmup=1, clock=clock, block=2)
    assert calls == ["A", "A", "B", "B"] * 3
    assert stats["A"]["times"] == [2.0, 2.0] and stats["B"]["times"] == [5.0, 15.0]
    with pytest.raises(ValueError):
        protocol.interleave(arms, rounds=1, block=0)


def test_interleave_rejects_bad_arguments():
    with pytest.raises(ValueError):
        protocol.interleave({}, rounds=1)
    with pytest.raises(ValueError):
        protocol.interleave({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError):
        protocol.interleave({"a": lambda: None}, rounds=1, warmup=-1)


def test_train_step_rejects_unknown_sizes_before_running():
    from benchmarks import train_step

    with pytest.raises(SystemExit) as exc:
        train_step.main(["--sizes=quickstart,nope", "--no-append"])
    assert exc.value.code == 2
    assert {"quickstart", "large", "video", "flux_dev_slice"} <= set(train_step.SIZES)
    video = train_step.SIZES["video"]
    assert (video["heads"] * video["head_dim"], video["img_tokens"], video["batch"]) == (512, 1024, 4)


# --------------------------------------------------------------------------- accelerator.sh


def run_script(*args, env=None, timeout=60):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def stub_python(tmp_path):
    """A 'python' that records every call and claims a GPU: nothing real runs."""
    log = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
case "$1" in
  -c) case "$2" in *default_backend*) echo gpu;; esac; exit 0;;
  -) cat > /dev/null; exit 0;;
  -m) [ "$2" = benchmarks.attention ] && exit 7; exit 0;;
esac
""")
    stub.chmod(0o755)
    return stub, log


def test_accelerator_script_syntax():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


def test_accelerator_help():
    proc = run_script("--help")
    assert proc.returncode == 0
    for word in ("train_step", "flux_mfu", "paro", "--dry-run", "--out", "cudnn"):
        assert word in proc.stdout


@pytest.mark.parametrize("args", [["--bogus"], ["--dry-run", "--frobnicate=1"], ["--out"], ["--parts=train_step,nope"],
                                  ["--timeout=soon"], ["positional"]])
def test_accelerator_bad_arguments_exit_2_with_one_line(args, tmp_path):
    proc = run_script(*args, "--out", str(tmp_path / "out")) if args != ["--out"] else run_script(*args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("accelerator.sh: ")
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_accelerator_dry_run_lists_three_parts_and_runs_nothing(tmp_path, stub_python):
    stub, log = stub_python
    out = tmp_path / "out"
    proc = run_script("--dry-run", "--out", str(out), "--python", str(stub))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for n, part in enumerate(("train_step", "flux_mfu", "paro"), 1):
        assert f"part {n}/3 {part}" in text
    commands = [line for line in text.splitlines() if line.startswith(str(stub))]
    assert any("-m benchmarks.train_step" in c and "--torch_device=cuda" in c for c in commands)
    assert any("--sizes=flux_dev_slice" in c and "--dtype=bfloat16" in c for c in commands)
    assert any("-m benchmarks.attention" in c and "--dense=cudnn" in c and "0.5,0.3,0.2" in c for c in commands)
    assert any("-m benchmarks.paro_video" in c and "--dense=cudnn" in c and "0.5,0.3,0.2" in c for c in commands)
    assert not log.exists(), "the dry run called Python"
    assert not out.exists()


def test_accelerator_out_defaults_to_env_out(tmp_path, stub_python):
    stub, log = stub_python
    proc = run_script("--dry-run", "--python", str(stub), env={"OUT": str(tmp_path / "from_env")})
    assert f"outputs would go to {tmp_path / 'from_env'}" in proc.stdout
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", SCRIPT, "--dry-run", "--python", str(stub)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert "outputs would go to ./accelerator_out" in proc.stdout
    assert not log.exists()


def test_accelerator_without_gpu_exits_3(tmp_path):
    out = tmp_path / "out"
    # --parts/--timeout only bound what would run if the check were broken.
    proc = run_script("--out", str(out), "--python", sys.executable, "--parts=paro", "--timeout=1",
                      env={"JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no GPU visible" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_accelerator_runs_every_command_and_reports_failures(tmp_path, stub_python):
    stub, log = stub_python
    out = tmp_path / "out"
    proc = run_script("--quick", "--out", str(out), "--python", str(stub), "--max_load=2")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the stub's attention run fails
    calls = [line for line in log.read_text().splitlines() if line.startswith("-m ")]
    assert [c.split()[1] for c in calls] == ["benchmarks.train_step"] * 3 + ["benchmarks.attention",
                                                                          "benchmarks.paro_video"]
    assert all(c.endswith("--max_load=2") for c in calls)
    summary = (out / "summary.txt").read_text()
    assert summary.count("rc=0") == 4 and summary.count("rc=7") == 1
    assert {"env.txt", "train_step.log", "flux_mfu.log", "paro.log", "summary.txt"} <= set(os.listdir(out))


def test_profile_categories_follow_the_name_stack():
    from benchmarks.profile_step import category, instruction_names, model_part, torch_category

    assert category("jit(step)/jvp(attention)/dot_general") == "attention"
    assert category("jit(step)/transpose(jvp(attention))/vmap()/reduce_max") == "attention"
    assert category("jit(step)/transpose(jvp())/dot_general;jit(step)/jvp(attention)/add") == "matmul"
    assert category("jit(step)/jvp(norm)/rsqrt") == "transcendental"
    assert category("jit(step)/jvp()/reduce_sum") == "reduction"
    assert category("jit(step)/transpose(jvp())/conv_general_dilated") == "conv"
    assert category("jit(step)/transpose(jvp(rope))/transpose") == "layout"
    assert category("jit(step)/add") == "optimizer"  # outside the gradient: the update
    assert [model_part(n) for n in ("jit(step)/transpose(jvp(mlp))/dot_general", "jit(step)/jvp(modulation)/mul",
                                    "jit(step)/jvp(rope)/mul", "jit(step)/jvp()/dot_general", "jit(step)/sub")] == [
        "mlp", "modulation", "rope", "other layers", "optimizer"]
    assert [torch_category(n) for n in ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::addmm",
                                        "aten::mkldnn_convolution", "aten::convolution_backward",
                                        "aten::_foreach_mul_", "aten::native_layer_norm", "aten::gelu",
                                        "aten::permute", "aten::add")] == [
        "attention", "matmul", "conv", "conv", "optimizer", "reduction", "transcendental", "layout", "elementwise"]
    hlo = ('  %ynn_fusion.3 = f32[2,3]{1,0} fusion(%a), kind=kCustom, metadata={op_type="dot_general" '
           'op_name="jit(step)/jvp()/dot_general" source_file="x.py"}\n'
           '  ROOT %tuple.1 = (f32[2,3]) tuple(%ynn_fusion.3)\n')
    assert instruction_names(hlo) == {"ynn_fusion.3": "jit(step)/jvp()/dot_general"}


def test_profile_step_attributes_the_real_step(tmp_path):
    """One profiled step of the quickstart MMDiT and of the tiny VAE (seedjax only, batch 2) in their own
    process, where the per-thunk trace flag is set before JAX starts: every category each step has shows time."""
    from tests.runner import ROOT, env_for

    proc = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--sizes=quickstart,vae_tiny", "--steps=1",
                           "--frameworks=seedjax", "--batch=2", "--no-append"],
                          cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mmdit, vae = proc.stdout.split("\n#### ")[1:]
    assert mmdit.startswith("quickstart: batch 2") and vae.startswith("vae_tiny: batch 2 x 16x16"), proc.stdout
    for text, present, absent in ((mmdit, ("attention", "matmul", "optimizer"), ("conv", "other")),
                                  (vae, ("conv", "reduction", "optimizer"), ("attention", "other"))):
        rows = dict(re.findall(r"^\| (\w+) \| ([0-9.]+) \|$", text, re.M))
        assert set(rows) == {"attention", "matmul", "conv", "reduction", "transcendental", "elementwise", "layout",
                             "optimizer", "other"}, text
        assert all(float(rows[c]) > 0 for c in present) and all(float(rows[c]) == 0 for c in absent), text
    parts = dict(re.findall(r"^\| (attention|rope|norm|modulation|mlp) \| ([0-9.]+) \| [0-9.]+% \|$", mmdit, re.M))
    assert len(parts) == 5 and all(float(t) > 0 for t in parts.values()), proc.stdout  # the scopes reach the profile
    assert "by model part" not in vae
    bad = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--sizes=nope", "--no-append"],
                         cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown: ['nope']" in bad.stderr


def test_vae_step_checks_equal_work_and_times_both_sides():
    """benchmarks.vae_step as users run it, at its tiny size: the same parameters and losses on both sides
    (diffusers' AutoencoderKL loaded with seedjax's weights), then one timed turn each."""
    from tests.runner import ROOT, env_for

    proc = subprocess.run([sys.executable, "-m", "benchmarks.vae_step", "--sizes=tiny", "--steps=1", "--warmup=0",
                           "--no-append"], cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parity = re.search(r"first loss relative difference ([0-9.e+-]+), decrease over two updates ([0-9.e+-]+)",
                       proc.stdout)
    assert parity and float(parity.group(1)) < 1e-4 and float(parity.group(2)) < 1e-2, proc.stdout
    assert re.search(r"^\| tiny \| 2 x 16x16 \| [0-9,]+ \| [0-9.]+ \([0-9.-]+\) \| [0-9.]+ \([0-9.-]+\) \| [0-9.]+x \|",
                     proc.stdout, re.M), proc.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.vae_step", "--sizes=tiny,nope"], cwd=ROOT,
                         env=env_for(1), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_step_memory_counts_the_peak_of_the_measured_steps_only():
    """benchmarks.step_memory: the procfs counters it reads, one side measured in this process (the
    tiny size), and its table's arithmetic."""
    import numpy as np

    from benchmarks import step_memory as sm

    spike = np.ones(96 * 2**20, np.uint8)  # written, so resident
    del spike
    sm.reset_peak()
    before = sm.rss_kib()
    assert before["VmHWM"] - before["VmRSS"] < 16 * 1024  # the earlier spike is forgotten
    block = np.ones(48 * 2**20, np.uint8)
    assert sm.rss_kib()["VmHWM"] - before["VmRSS"] >= 40 * 1024
    del block
    got = sm.measure("seedjax", "tiny", 1)
    assert got["peak"] >= got["resting"] > 0 and got["xla_temp"] > 0 and got["xla_arguments"] > 0
    results = {"seedjax": dict(resting=100 * sm.MIB, peak=150 * sm.MIB, xla_temp=40 * sm.MIB,
                               xla_arguments=10 * sm.MIB),
               "torch": dict(resting=120 * sm.MIB, peak=220 * sm.MIB)}
    cells = [c.strip() for c in sm.row("quickstart", results).strip("|").split("|")]
    assert cells[2:] == ["100", "150", "50", "120", "220", "100", "40 + 10", "2.00x"]
    assert sm.main(["--sizes=nope"]) == 2 and sm.main(["--child=jax:quickstart"]) == 2
