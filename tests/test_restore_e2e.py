"""SeedVR2's chain end to end (experiments/seedvr/pipeline.py:tiny, built once for the module, as a
user runs it): a multi-step restoration run and its one-step adversarial stage (16x16 clips of 2
frames and stills), then the restore tool and the quality benchmark on them.

- The chain: both stages finish, the one-step stage reports its held-out restoration metrics at 1 NFE.
- `python -m seedjax.tools.restore`: a folder holding an image and a video of sizes the run never
  trained on (22x42 is not even whole 4-pixel patches) and a text file is restored as a user runs
  the tool (a subprocess): the outputs keep the inputs' names, sizes and frame counts, summary.json
  says so, and the image and the video's chunks are what `Restorer` gives in this process for the
  same pixels and keys. Tiles and a window rule reach `Restorer`; a GIF and odd sizes become
  even-sized mp4s; bad input exits 2 with one line and writes nothing.
- `benchmarks.restore_quality` on a handful of items: its tables have the rows and window rules
  asked for, and the degraded input's PSNR is what numpy computes, in uint8 units, on clips rebuilt
  here from the held-out renderings and the run's own degradation draws.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from benchmarks import restore_quality as rq
from data_pipelines.core.config import degradation_config
from data_pipelines.sources import moving_digits
from data_pipelines.techniques import degradations
from seedjax import inference
from seedjax.inference.bundle import run_config
from seedjax.inference.restoration import Restorer
from seedjax.serving.png import to_uint8
from seedjax.tools import restore
from tests.runner import ROOT, env_for

IMAGE_SHAPE = (22, 42, 3)  # H, W: neither a multiple of the 4-pixel patch nor the run's 16x16 square
CLIP_SHAPE = (5, 24, 40, 3)  # 5 frames: 3 chunks of the run's 2-frame clips, the last one short
FPS = 8

pytestmark = pytest.mark.slow(minutes=6)  # the chain's two tiny stages, the tool, one benchmark run

F, S = 2, 16  # the tiny variant's clip length and frame size
SEEDS = (0, 1)
FLAGS = ("--clips=2", "--photos=3", f"--seeds={SEEDS[0]},{SEEDS[1]}", "--steps=2", "--rules=adaptive,fixed",
         "--rounds=2")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("seedvr") / "rp")
    cmd = [sys.executable, "-m", "seedjax.pipeline", "--pipeline=experiments/seedvr/pipeline.py:tiny",
           f"--workdir={workdir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"multi": os.path.join(workdir, "restore"), "one": os.path.join(workdir, "restore_adversarial")}


def test_the_chain_ends_at_one_step_with_held_out_metrics(chain):
    """Both stages ran to the end; the one-step stage's eval restored held-out degraded clips at 1 NFE."""
    for run in chain.values():
        assert os.path.exists(os.path.join(run, "checkpoints", "12"))
    metrics = [json.loads(line) for line in open(os.path.join(chain["one"], "metrics.jsonl"))]
    last = [m for m in metrics if "eval/restore/psnr" in m][-1]
    assert last["eval/restore/nfe"] == 1 and np.isfinite(last["eval/restore/psnr"])
    assert last["eval/restore/degraded_psnr"] > 0


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


# --------------------------------------------------------------------------- the restore tool


@pytest.fixture(scope="module")
def run(chain) -> str:
    """The chain's multi-step run: the tool needs only a restoration run's config and checkpoint."""
    return chain["multi"]


def _image() -> np.ndarray:
    """A smooth picture with some noise (uint8 [H, W, 3]): something for a restorer to restore."""
    h, w, _ = IMAGE_SHAPE
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([x / w, y / h, (x + y) / (w + h)], -1) * 255
    noise = np.random.default_rng(0).normal(0, 12, IMAGE_SHAPE)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def _write_clip(path: str) -> None:
    import av

    frames = np.random.default_rng(1).integers(0, 256, CLIP_SHAPE, dtype=np.uint8)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width = CLIP_SHAPE[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _read_clip(path: str) -> tuple[np.ndarray, float]:
    """(uint8 [F, H, W, 3] of every frame, the average frame rate)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(_image()).save(folder / "still.png")
    _write_clip(str(folder / "clip.mp4"))
    (folder / "notes.txt").write_text("not a picture")
    return str(folder)


@pytest.fixture(scope="module")
def restored(run, inputs, tmp_path_factory):
    """The tool run on the folder as a user runs it: (its process, the --out folder)."""
    out = str(tmp_path_factory.mktemp("restored") / "out")
    cmd = [sys.executable, "-m", "seedjax.tools.restore", f"--workdir={run}", f"--input={inputs}", f"--out={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_folder_of_an_image_and_a_video_keeps_names_sizes_and_frames(restored, run, inputs):
    proc, out = restored
    assert sorted(os.listdir(out)) == ["clip.mp4", "still.png", "summary.json"]
    with Image.open(os.path.join(out, "still.png")) as image:
        assert (image.height, image.width, image.mode) == (*IMAGE_SHAPE[:2], "RGB")
    frames, fps = _read_clip(os.path.join(out, "clip.mp4"))
    assert frames.shape == CLIP_SHAPE and fps == FPS
    lines = proc.stdout.strip().splitlines()
    assert "skipped 1 entry" in lines[0]  # notes.txt
    assert "clip.mp4 40x24, 5 frames" in lines[1] and "still.png 42x22, 1 frame," in lines[2]
    assert "2 file(s), 6 frame(s) at 2 NFE" in lines[-1] and len(lines) == 4
    summary = json.load(open(os.path.join(out, "summary.json")))
    files = {os.path.basename(row["input"]): row for row in summary["files"]}
    assert sorted(files) == ["clip.mp4", "still.png"]
    want = {"clip.mp4": dict(width=40, height=24, frames=5, out_width=40, out_height=24, fps=FPS, nfe=2),
            "still.png": dict(width=42, height=22, frames=1, out_width=42, out_height=22, nfe=2)}
    for name, row in files.items():
        assert {k: row[k] for k in want[name]} == want[name], row
        assert row["output"] == os.path.join(out, name)  # a PNG stays .png, an mp4 .mp4
        assert row["seconds"] > 0
    assert summary["settings"] == {"workdir": run, "input": inputs, "steps": 2, "seed": 0, "window_rule": "adaptive",
                                   "tile": 0, "overlap": 8, "chunk_frames": 2, "prompt": "", "nfe": 2}


@pytest.fixture(scope="module")
def bundle(run):
    return inference.load(run)


def test_the_image_is_what_the_restorer_gives_in_process(restored, inputs, bundle):
    """The tool runs the model: its PNG is Restorer(pixels, key(seed)) within 1 level (8-bit rounding,
    and this process's 8 devices against the tool's one), not the input and not another seed's."""
    _, out = restored
    source = np.asarray(Image.open(os.path.join(inputs, "still.png")), np.uint8)
    got = np.asarray(Image.open(os.path.join(out, "still.png")), np.int32)
    restorer = Restorer(bundle)
    pixels = source.astype(np.float32) / 127.5 - 1.0
    want = to_uint8(restorer(pixels, jax.random.key(0))).astype(np.int32)
    assert np.abs(got - want).max() <= 1
    other_seed = to_uint8(restorer(pixels, jax.random.key(1))).astype(np.int32)
    # The tiny run's residual model (the input plus a small correction) moves pixels by a few levels:
    # a passthrough would leave every pixel as it was, another seed's noise moves many of them.
    assert np.mean(got != source) > 0.2
    assert np.mean(other_seed != want) > 0.05


def test_the_video_is_restored_chunk_by_chunk_in_order(restored, inputs, bundle):
    """Each 2-frame chunk c is Restorer(chunk, key) with key(0) for the first chunk and fold_in(key(0), c)
    after it, as the docstring says. Compared on luma: yuv420p halves the chroma, the luma stays within
    a few levels. (The tiny run's residual model is its input plus a correction of a few levels, so
    a wrong key or frame order would be a few levels off too: the image test is the exact one.)"""
    _, out = restored
    source, _ = _read_clip(os.path.join(inputs, "clip.mp4"))  # decoded as the tool decodes it
    got, _ = _read_clip(os.path.join(out, "clip.mp4"))
    restorer = Restorer(bundle)
    key = jax.random.key(0)
    want = np.concatenate([to_uint8(restorer(source[f:f + 2] / np.float32(127.5) - 1.0,
                                             key if c == 0 else jax.random.fold_in(key, c)))
                           for c, f in enumerate(range(0, CLIP_SHAPE[0], 2))])
    luma = lambda x: x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    error = np.abs(luma(got) - luma(want)).mean(axis=(1, 2))
    assert error.max() < 6, error


def test_tiles_and_a_window_rule_pass_through(run, inputs, bundle, tmp_path, capsys):
    """16-pixel tiles over 22x42 pixels (2 x 4 tiles, blended over 4 pixels) under the 'fixed' rule:
    the right size and the Restorer's own result at those settings (255 levels from the untiled
    image). The rule moves this 12-step model's pixels by ~0.05 levels only, so the check that it
    reached the Restorer is summary.json's rule, which the tool reads from the Restorer's config."""
    out = tmp_path / "tiled"
    image = os.path.join(inputs, "still.png")
    flags = ["--tile=16", "--overlap=4", "--window_rule=fixed", "--seed=3"]
    assert restore.main([f"--workdir={run}/checkpoints/12", f"--input={image}", f"--out={out}", *flags]) == 0
    assert "still.png 42x22, 1 frame," in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["still.png", "summary.json"]
    got = np.asarray(Image.open(out / "still.png"), np.int32)
    assert got.shape == IMAGE_SHAPE
    pixels = np.asarray(Image.open(image), np.float32) / 127.5 - 1.0
    restorer = Restorer(bundle, tile=16, overlap=4, window_rule="fixed")
    want = to_uint8(restorer(pixels, jax.random.key(3))).astype(np.int32)
    assert np.abs(got - want).max() <= 1
    settings = json.load(open(out / "summary.json"))["settings"]
    assert (settings["tile"], settings["overlap"], settings["window_rule"], settings["seed"]) == (16, 4, "fixed", 3)


def test_a_gif_and_odd_sizes_become_even_sized_mp4s_and_a_rotation_tag_is_kept(run, tmp_path, capsys):
    """A 15x21 GIF (odd sides) is written as an mp4 padded to 16x22, at the GIF's 10 frames/s; a
    16x24 mp4 tagged to be shown turned by 90 degrees keeps its tag (both restore as 16x24 pieces:
    one pair of compiled chunk shapes)."""
    import av

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(2)
    gif = [Image.fromarray(rng.integers(0, 256, (15, 21, 3), dtype=np.uint8)) for _ in range(3)]
    gif[0].save(folder / "anim.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    rotates = hasattr(av.video.stream.VideoStream, "set_display_rotation")
    with av.open(str(folder / "turned.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width, stream.pix_fmt = 16, 24, "yuv420p"
        if rotates:
            stream.set_display_rotation(90)
        for frame in rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "out"
    assert restore.main([f"--workdir={run}", f"--input={folder}", f"--out={out}"]) == 0
    assert "anim.gif 21x15, 3 frames" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["anim.mp4", "summary.json", "turned.mp4"]
    frames, fps = _read_clip(str(out / "anim.mp4"))
    assert frames.shape == (3, 16, 22, 3) and fps == 10
    files = {os.path.basename(row["input"]): row for row in json.load(open(out / "summary.json"))["files"]}
    sizes = [files["anim.gif"][k] for k in ("width", "height", "out_width", "out_height", "frames")]
    assert sizes == [21, 15, 22, 16, 3]
    with av.open(str(out / "turned.mp4")) as container:
        first = next(container.decode(video=0))
        assert (first.width, first.height) == (24, 16)
        assert getattr(first, "rotation", 0) == (90 if rotates else 0)


@pytest.fixture(scope="module")
def not_restoration(run, tmp_path_factory) -> str:
    """The same run with diffusion.restore off: a loadable concat-conditioned video run that is not
    a restoration run (what an image-to-video run of this model would be)."""
    out = str(tmp_path_factory.mktemp("not_restoration") / "run")
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("tb", "metrics.jsonl"))
    path = os.path.join(out, "config.json")
    config = json.load(open(path))
    config["diffusion"]["restore"] = False
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return out


@pytest.mark.parametrize("case, message", [
    ("no_out", "required: --out"),
    ("missing_input", "no such file or folder"),
    ("no_supported_file", "no image (.png"),
    ("not_restoration", "not a restoration run"),
    ("bad_rule", "--window_rule must be one of adaptive, fixed, grow, got 'square'"),
    ("out_is_a_file", "broken.mp4 is a file, not a folder"),
    ("out_under_a_file", "broken.mp4 is a file, not a folder"),
    ("onto_its_input", "would overwrite its input"),
    ("same_output_name", "would both be written to"),
    ("unreadable", "not a readable video"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, message, run, inputs, not_restoration, tmp_path,
                                                           capsys):
    out = tmp_path / "out"
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "twins").mkdir()
    for name in ("a.jpg", "a.png"):  # both would be a.png
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "twins" / name)
    argv = {
        "no_out": [f"--workdir={run}", f"--input={inputs}"],
        "missing_input": [f"--workdir={run}", f"--input={tmp_path / 'nothing.png'}", f"--out={out}"],
        "no_supported_file": [f"--workdir={run}", f"--input={tmp_path / 'texts'}", f"--out={out}"],
        "not_restoration": [f"--workdir={not_restoration}", f"--input={inputs}", f"--out={out}"],
        "bad_rule": [f"--workdir={run}", f"--input={inputs}", f"--out={out}", "--window_rule=square"],
        "out_is_a_file": [f"--workdir={run}", f"--input={inputs}", f"--out={tmp_path / 'broken.mp4'}"],
        "out_under_a_file": [f"--workdir={run}", f"--input={inputs}", f"--out={tmp_path / 'broken.mp4' / 'out'}"],
        "onto_its_input": [f"--workdir={run}", f"--input={inputs}", f"--out={inputs}"],
        "same_output_name": [f"--workdir={run}", f"--input={tmp_path / 'twins'}", f"--out={out}"],
        "unreadable": [f"--workdir={run}", f"--input={tmp_path / 'broken.mp4'}", f"--out={out}"],
    }[case]
    before = sorted(os.listdir(inputs))
    assert restore.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert captured.out == ""
    assert not out.exists() and sorted(os.listdir(inputs)) == before


def test_help_prints_the_usage(capsys):
    assert restore.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith(restore.__doc__.strip().splitlines()[0])
