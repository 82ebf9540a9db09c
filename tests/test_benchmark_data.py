"""benchmarks.data: arms in rounds (training, each source x workers x read threads, per-core rows),
fresh iterators per turn, the table's ratios, latent shards written as `prepare` writes them."""

import re

import pytest

import data_pipelines
from benchmarks import data
from tests.runner import env_for


def test_rounds_call_every_arm_once_a_round_in_order():
    calls = []
    arms = {name: (lambda name=name: calls.append(name) or float(len(calls))) for name in ("a", "b", "c")}
    rates = data.run_rounds(arms, 2)
    assert calls == ["a", "b", "c", "a", "b", "c"]
    assert rates == {"a": [1.0, 4.0], "b": [2.0, 5.0], "c": [3.0, 6.0]}


def test_warmup_covers_what_the_workers_can_buffer():
    cfg = data.data_config("digits", "", 2)
    assert data.warmup_batches(cfg) == 3 + 2 * 2 * cfg.worker_buffer_size
    assert data.warmup_batches(data.one_core(cfg)) == 3
    assert (cfg.num_workers, cfg.read_threads, cfg.read_buffer) == (0, 1, 0)


def test_latent_shards_load_as_the_training_iterator_reads_them(tmp_path):
    folder, out = tmp_path / "folder", tmp_path / "latents"
    folder.mkdir()
    data.make_folder(str(folder), 6, sizes=((320, 320), (256, 480), (480, 320)))
    data.write_latent_shards(str(folder), str(out), 256)
    cfg = data.one_core(data.data_config("shards", str(out), 0, 256))
    it = data_pipelines.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0, process_count=1)
    try:
        batch = next(it)
    finally:
        it.close()
    n, h, w, c = batch["latent"].shape
    assert n == 4 and c == 16 and (h * 8, w * 8) in {(256, 256), (192, 384), (384, 256)}, batch["latent"].shape


@pytest.mark.slow
def test_one_round_tabulates_every_arm_against_training(tmp_path, monkeypatch, capsys):
    target = tmp_path / "BENCHMARKS.md"
    monkeypatch.setenv("SEEDJAX_BENCHMARKS_MD", str(target))
    for key, value in env_for(1).items():  # the training run shares the tests' compilation cache
        if key.startswith(("JAX_COMPILATION", "XLA_FLAGS")):
            monkeypatch.setenv(key, value)
    argv = ["--sources=digits", "--workers=0,1", "--read_threads=1", "--per_core=latents256", "--rounds=1",
            "--batches=2", "--training=experiments/quickstart/pretrain.py:tiny", "--training_steps=20",
            "--max_load=1000"]
    assert data.main(argv) == 0
    out = capsys.readouterr().out
    order = re.findall(r"^round 1/1  (\S+)", out, re.M)
    assert order == ["training", "digits|0|1", "digits|1|1", "latents256|0|one"]
    eats = float(re.search(r"eats (\d+) \(", out).group(1))
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:4]): line.strip("|").split("|")[4:]
            for line in out.splitlines() if re.match(r"\| (digits|latents256) ", line)}
    assert set(rows) == {("digits", "32x32", "0", "1"), ("digits", "32x32", "1", "1"),
                         ("latents256", "256x256 (one core)", "0", "1 (no read-ahead)")}
    for rate, ratio in rows.values():
        median = float(rate.split()[0])
        # the table divides unrounded medians; `eats` is read back rounded to whole examples/s
        assert median > 0 and float(ratio) == pytest.approx(median / eats, rel=0.6 / eats, abs=0.051)
    assert "Machine:" in out and out.strip().endswith(target.read_text().strip().splitlines()[-1].strip())


@pytest.mark.parametrize("flag, message", [
    ("--workers=x", "--workers"), ("--read_threads=0", "--read_threads"), ("--per_core=folder512", "'folder512'"),
    ("--sources=photos", "'photos'"), ("--rounds=0", "--rounds"), ("--training_steps=10", "--training_steps"),
    ("--frames=3", "unknown flag '--frames'")])
def test_bad_flags_exit_2_with_one_line(flag, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEEDJAX_BENCHMARKS_MD", str(tmp_path / "BENCHMARKS.md"))
    assert data.main([flag]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "BENCHMARKS.md").exists()

