"""A gs:// workdir end to end, against a fake GCS JSON API on 127.0.0.1 (tests/fake_gcs.py).

Every client a run uses talks to the fake: gcsfs through etils.epath (config, metrics, samples,
TensorBoard, done.json, orbax's directories and markers), TensorStore's own `gcs` driver (orbax
array data) and google-cloud-storage (orbax's bucket checks). A run stopped at step 3 and resumed
must give the losses of an uninterrupted local run of the same command, exactly, and leave the
whole workdir contract in the bucket; without gcsfs the same command exits 2 and writes nothing.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.fake_gcs import FakeGCS
from tests.runner import ROOT, env_for, losses

CONFIG = "experiments/quickstart/pretrain.py:tiny"
FLAGS = ("--config.total_steps=6", "--config.checkpoint_every=3", "--config.sample_every=6", "--config.log_every=1")
BUCKET = "testbucket"
WORKDIR = f"gs://{BUCKET}/run"


def command(workdir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "seedjax.main", f"--config={CONFIG}", f"--workdir={workdir}", *FLAGS, *extra]


def run(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gcs():
    with FakeGCS(buckets=[BUCKET]) as server:
        yield server


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
    """The gs:// run stopped at step 3, then (after a simulated crash left step 4 half-written)
    resumed to 6; beside it, the same command on a local workdir (started first, so the two
    compile in parallel)."""
    pytest.importorskip("gcsfs")
    assert not os.path.exists(os.path.join(ROOT, "gs:")), "remove the stray ./gs: directory first"
    scratch = tmp_path_factory.mktemp("local")
    local = str(scratch / "run")
    reference_log = open(scratch / "stderr.txt", "w+")  # a file, not a pipe nobody reads meanwhile
    reference = subprocess.Popen(command(local), cwd=ROOT, env=env_for(1), stdout=subprocess.DEVNULL,
                                 stderr=reference_log, text=True)
    try:
        env = env_for(1, **gcs.client_env())
        first = run(command(WORKDIR, "--stop_at_step=3"), env)
        after_first = gcs.objects(BUCKET, "run/")
        # A crash during a later save: step 4 fully written but for orbax's final commit marker
        # (on GCS orbax cannot rename a directory; the marker is what makes a step finished).
        for name, data in after_first.items():
            if name.startswith("run/checkpoints/3/") and name != "run/checkpoints/3/commit_success.txt":
                gcs.put(BUCKET, name.replace("/checkpoints/3/", "/checkpoints/4/"), data, {})
        second = run(command(WORKDIR), env)
        reference.wait(timeout=600)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
        reference_log.seek(0)
        reference_err = reference_log.read()
        reference_log.close()
    assert reference.returncode == 0, reference_err[-3000:]
    return {"local": local, "first": first, "second": second, "after_first": after_first,
            "objects": gcs.objects(BUCKET, "run/"), "env": env}


def test_gs_run_stops_then_resumes_with_the_losses_of_a_local_run(runs):
    first, second = runs["first"], runs["second"]
    assert first.returncode == 0, first.stderr[-3000:]
    steps = {name.split("/")[2] for name in runs["after_first"] if name.startswith("run/checkpoints/")}
    assert steps == {"3"}
    assert "run/done.json" not in runs["after_first"]  # stopped early: not finished
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "at step 3" in second.stderr
    assert "checkpoint 4 was left half-written" in second.stderr
    assert not [n for n in runs["objects"] if n.startswith("run/checkpoints/4/")]  # orbax removed it
    metrics = rows(runs["objects"]["run/metrics.jsonl"])
    gs_losses = {r["step"]: r["loss"] for r in metrics if "loss" in r}
    assert sorted(gs_losses) == [1, 2, 3, 4, 5, 6]
    assert gs_losses == losses(runs["local"])  # exact float equality, every step


def test_gs_workdir_holds_the_whole_contract(runs):
    objects = runs["objects"]
    config = json.loads(objects["run/config.json"])
    assert config["total_steps"] == 6 and config["checkpoint_every"] == 3
    assert objects["run/samples/step_6.png"].startswith(b"\x89PNG\r\n\x1a\n")
    events = [name for name in objects if name.startswith("run/tb/events.out.tfevents.")]
    assert len(events) == 2, sorted(objects)  # one event file per process run
    assert all(objects[name] for name in events) and any(b"loss" in objects[name] for name in events)
    for step in (3, 6):
        names = [n for n in objects if n.startswith(f"run/checkpoints/{step}/")]
        assert f"run/checkpoints/{step}/commit_success.txt" in names, sorted(names)  # orbax's GCS commit marker
        assert any(n.startswith(f"run/checkpoints/{step}/state/") for n in names)
        assert f"run/checkpoints/{step}/iterator/metadata" in names and f"run/checkpoints/{step}/meta/metadata" in names
    assert not [n for n in objects if "orbax-checkpoint-tmp" in n]
    assert json.loads(objects["run/done.json"]) == {"step": 6, "total_steps": 6, "stage": "pretrain"}
    assert not os.path.exists(os.path.join(ROOT, "gs:")), "a local ./gs: directory was created"


def test_init_from_a_gs_workdir_loads_the_same_weights_as_the_local_run(runs):
    """`config.init_from=gs://...` reads the latest checkpoint through checkpoint.load_state_tree."""
    code = (
        "import sys, jax, numpy as np\n"
        "from seedjax.train.checkpoint import load_state_tree\n"
        "a, b = load_state_tree(sys.argv[1]), load_state_tree(sys.argv[2])\n"
        "fa = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(a)}\n"
        "fb = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(b)}\n"
        "assert fa.keys() == fb.keys(), sorted(set(fa) ^ set(fb))[:5]\n"
        "bad = [k for k in fa if not np.array_equal(fa[k], fb[k])]\n"
        "assert not bad, bad[:5]\n"
        "print('leaves', len(fa))\n"
    )
    proc = run([sys.executable, "-c", code, WORKDIR, runs["local"]], runs["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 10


def test_without_gcsfs_a_gs_workdir_exits_2_and_creates_nothing(gcs):
    """gcsfs hidden from the interpreter: the command stops before anything is written."""
    block = ("import runpy, sys; sys.modules['gcsfs'] = None; "
             "runpy.run_module('seedjax.main', run_name='__main__', alter_sys=True)")
    workdir = f"gs://{BUCKET}/no_gcsfs"
    proc = run([sys.executable, "-c", block, *command(workdir)[3:]], env_for(1, **gcs.client_env()))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "pip install" in line]
    assert lines and "gcsfs" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert gcs.objects(BUCKET, "no_gcsfs") == {}
    assert not [r for r in gcs.requests if "no_gcsfs" in r[1]]
    assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_fake_gcs_speaks_the_json_api_subset_the_clients_rely_on(gcs):
    """The parts the e2e run may not reach: paging with a delimiter, ranges, preconditions."""
    import urllib.error
    import urllib.request

    def call(method, path, data=None, headers=None):
        request = urllib.request.Request(gcs.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    for name in ("api/a/1", "api/a/2", "api/b", "api/c/1", "api/d"):
        status, _, _ = call("POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}", name.encode())
        assert status == 200
    seen_items, seen_prefixes, token = [], [], None
    while True:
        query = "prefix=api/&delimiter=/&maxResults=2" + (f"&pageToken={token}" if token else "")
        page = json.loads(call("GET", f"/storage/v1/b/{BUCKET}/o?{query}")[2])
        seen_items += [item["name"] for item in page.get("items", [])]
        seen_prefixes += page.get("prefixes", [])
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen_items == ["api/b", "api/d"] and seen_prefixes == ["api/a/", "api/c/"]
    media = f"/storage/v1/b/{BUCKET}/o/api%2Fa%2F1?alt=media"
    status, headers, body = call("GET", media, headers={"Range": "bytes=2-4"})
    assert (status, body, headers["Content-Range"]) == (206, b"i/a", "bytes 2-4/7")
    generation = headers["x-goog-generation"]
    assert call("GET", f"{media}&ifGenerationNotMatch={generation}")[0] == 304
    assert call("GET", f"{media}&ifGenerationMatch={generation}")[0] == 200
    upload = f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=api/b"
    assert call("POST", f"{upload}&ifGenerationMatch=0", b"x")[0] == 412  # exists already
    assert call("DELETE", f"/storage/v1/b/{BUCKET}/o/api%2Fb?ifGenerationMatch=1")[0] == 412
    assert call("DELETE", f"/storage/v1/b/{BUCKET}/o/api%2Fb")[0] == 204
    assert call("GET", f"/storage/v1/b/{BUCKET}/o/api%2Fb")[0] == 404
    data = b"\x00binary\r\n\r\n--==0== not the end\n"
    body = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n{"name": "api/m"}\n--==0=='
            b"\nContent-Type: application/octet-stream\n\n" + data + b"\n--==0==--")
    status, _, resource = call("POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=multipart", body,
                               {"Content-Type": 'multipart/related; boundary="==0=="'})
    assert status == 200 and json.loads(resource)["size"] == str(len(data))
    assert gcs.objects(BUCKET, "api/m") == {"api/m": data}
    assert sorted(gcs.objects(BUCKET, "api/")) == ["api/a/1", "api/a/2", "api/c/1", "api/d", "api/m"]
