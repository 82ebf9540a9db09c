"""The training iterator: batch contract, determinism, exact resume (1 and 2 processes, 0 and 2 workers)."""

import json
import subprocess
import sys

import numpy as np
import pytest

import data_pipelines as dp
from data_pipelines.core import streams as streams_lib
from data_pipelines.core.tokenizer import detokenize
from data_pipelines.sources import glyphs


def _cfg(**overrides):
    cfg = dp.default_config()
    cfg.update(overrides)
    return cfg


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(batches_a, batches_b):
    return all(
        a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(batches_a, batches_b, strict=True)
    )


def _reference_digits(split, size=32):
    images, labels = glyphs.load_digits(split)
    return glyphs.upsample(images, size) * 2 - 1, labels


def _row_ids(images, reference):
    """Index of each image in `reference` (exact match), -1 if absent."""
    flat = reference.reshape(len(reference), -1)
    out = []
    for img in images.reshape(len(images), -1):
        hits = np.flatnonzero(np.all(flat == img, axis=1))
        out.append(int(hits[0]) if len(hits) else -1)
    return np.array(out)


def test_glyphs_are_scikit_learns_digits_read_without_importing_it():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = glyphs.load_digits("all")
    np.testing.assert_array_equal(images, (bunch.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(labels, bunch.target)
    assert glyphs.load_digits("test")[0].shape == (300, 8, 8)
    # A training process pays no scikit-learn import (scipy.stats and more: 1-2 s) for the digits.
    code = "import sys; from data_pipelines.sources import glyphs; glyphs.load_digits(); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_digits_batch_follows_contract():
    it = dp.make_train_iterator(_cfg(), global_batch_size=16, seed=0, process_index=0, process_count=1)
    batch = next(it)
    assert batch["image"].shape == (16, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["tokens"].shape == (16, 64) and batch["tokens"].dtype == np.int32
    assert batch["text_mask"].dtype == bool
    assert batch["loss_mask"].shape == (16, 32, 32) and np.all(batch["loss_mask"] == 1)
    assert np.all(batch["target_size"] == [32, 32])
    assert batch["defect_box"].shape == (16, 4, 4) and np.all(batch["defect_kind"] == -1)
    # Every image is a real training digit, with its own label, and the caption names it.
    reference, labels = _reference_digits("train")
    ids = _row_ids(batch["image"], reference)
    assert np.all(ids >= 0)
    np.testing.assert_array_equal(batch["label"], labels[ids])
    for caption, label in zip(detokenize(batch["tokens"]), batch["label"]):
        assert glyphs.DIGIT_WORDS[label] in caption or str(label) in caption, caption
    assert len(set(detokenize(next(it)["tokens"]))) > 4  # captions vary
    assert it.counters()["samples"] == 32


def test_same_seed_same_batches_other_seed_differs():
    a = _take(dp.make_train_iterator(_cfg(), global_batch_size=8, seed=3, process_index=0, process_count=1), 4)
    b = _take(dp.make_train_iterator(_cfg(), global_batch_size=8, seed=3, process_index=0, process_count=1), 4)
    c = _take(dp.make_train_iterator(_cfg(), global_batch_size=8, seed=4, process_index=0, process_count=1), 4)
    assert _same(a, b)
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_read_threads_change_the_speed_not_the_batches():
    one = _take(dp.make_train_iterator(_cfg(read_threads=1), global_batch_size=8, seed=3, process_index=0,
                                       process_count=1), 3)
    three = _take(dp.make_train_iterator(_cfg(read_threads=3), global_batch_size=8, seed=3, process_index=0,
                                         process_count=1), 3)
    assert _same(one, three)


@pytest.mark.parametrize("shuffle", ["numpy_permutations", "grain_index_shuffle"])
def test_epochs_cover_the_split_and_reshuffle(shuffle, monkeypatch):
    # 1497 members: numpy's per-epoch permutations; with the threshold at 0, grain's `shuffle`.
    if shuffle == "grain_index_shuffle":
        monkeypatch.setattr(streams_lib, "PERMUTE_BELOW", 0)
    reference, _ = _reference_digits("train")
    n = len(reference)  # 1497; batches of 499 = 3 per epoch
    it = dp.make_train_iterator(_cfg(), global_batch_size=499, seed=0, process_index=0, process_count=1)
    epoch1 = np.concatenate([_row_ids(b["image"], reference) for b in _take(it, 3)])
    epoch2 = np.concatenate([_row_ids(b["image"], reference) for b in _take(it, 3)])
    assert sorted(epoch1) == list(range(n)) and sorted(epoch2) == list(range(n))
    assert not np.array_equal(epoch1, epoch2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact(num_workers):
    cfg = _cfg(num_workers=num_workers)
    make = lambda: dp.make_train_iterator(cfg, global_batch_size=8, seed=1, process_index=0, process_count=1)
    straight = make()
    expected = _take(straight, 3)
    state = json.loads(json.dumps(straight.get_state()))  # what a checkpoint stores
    expected += _take(straight, 4)  # (taking the state does not disturb the run)
    straight.close()
    resumed = make()
    resumed.set_state(state)
    assert _same(_take(resumed, 4), expected[3:])
    assert resumed.counters()["samples"] == 7 * 8
    resumed.close()


def test_two_processes_read_disjoint_slices_and_resume_exactly():
    reference, _ = _reference_digits("train")
    make = lambda p: dp.make_train_iterator(_cfg(), global_batch_size=16, seed=0, process_index=p, process_count=2)
    runs = {p: _take(make(p), 6) for p in (0, 1)}
    assert all(b["image"].shape[0] == 8 for p in runs for b in runs[p])
    ids = {p: np.concatenate([_row_ids(b["image"], reference) for b in runs[p]]) for p in runs}
    assert not set(ids[0]) & set(ids[1])  # within an epoch no sample is read twice
    for p in (0, 1):
        it = make(p)
        _take(it, 2)
        state = json.loads(json.dumps(it.get_state()))
        resumed = make(p)
        resumed.set_state(state)
        assert _same(_take(resumed, 4), runs[p][2:])


def test_eval_batch_is_held_out():
    batch = dp.make_eval_batch(_cfg(), num=40, seed=0)
    test_ref, test_labels = _reference_digits("test")
    ids = _row_ids(batch["image"], test_ref)
    assert np.all(ids >= 0) and len(set(ids)) == 40
    np.testing.assert_array_equal(batch["label"], test_labels[ids])
    train_ref, _ = _reference_digits("train")
    assert np.all(_row_ids(batch["image"], train_ref) == -1)
    assert batch["tokens"].shape == (40, 64)


def test_batch_size_must_divide_over_processes():
    with pytest.raises(ValueError, match="not divisible"):
        dp.make_train_iterator(_cfg(), global_batch_size=9, seed=0, process_index=0, process_count=2)


def test_global_batch_content_does_not_depend_on_the_process_count():
    one = dp.make_train_iterator(_cfg(), global_batch_size=16, seed=0, process_index=0, process_count=1)
    two = [dp.make_train_iterator(_cfg(), global_batch_size=16, seed=0, process_index=p, process_count=2)
           for p in (0, 1)]
    reference, _ = _reference_digits("train")
    for _ in range(4):
        whole = sorted(_row_ids(next(one)["image"], reference))
        halves = sorted(np.concatenate([_row_ids(next(it)["image"], reference) for it in two]))
        assert whole == halves


_PROCESS_SCRIPT = """
import hashlib, json, sys
import data_pipelines as dp
p, mode, state_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = dp.default_config()
cfg.source, cfg.image_size = "digit_scenes", 32
cfg.scenes.num_samples, cfg.scenes.defect_fraction, cfg.defects.enabled = 300, 0.3, True
it = dp.make_train_iterator(cfg, global_batch_size=8, seed=5, process_index=p, process_count=2)
if mode == "resume":
    with open(state_file) as f:
        it.set_state(json.load(f))
batches = [next(it) for _ in range(3)]
if mode == "first":
    with open(state_file, "w") as f:
        json.dump(it.get_state(), f)
    batches = [next(it) for _ in range(3)]
print(json.dumps([hashlib.sha256(b["image"].tobytes() + b["tokens"].tobytes()).hexdigest() for b in batches]))
"""


def test_two_real_processes_resume_exactly(tmp_path):
    """Each process is its own interpreter: stop after 3 batches, save state, restart, continue."""
    import subprocess
    import sys

    def run(mode):
        procs = [subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT, str(p), mode, str(tmp_path / f"state{p}.json")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (0, 1)]
        outs = [proc.communicate(timeout=300) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outs]
        return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    continued = run("first")  # batches 4-6 of an uninterrupted run, state saved after batch 3
    resumed = run("resume")  # fresh processes restored from that state
    assert resumed == continued
    assert continued[0] != continued[1]  # the two processes read different samples
