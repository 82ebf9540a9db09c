"""python -m seedjax.serve on an export of the tiny quickstart run, as a client sees it over HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import signal

import httpx
import numpy as np
import pytest

from seedjax import export
from seedjax.serving import png
from seedjax.serving.run_exported import ExportedGenerator
from tests.runner import post_all, serving


@pytest.fixture(scope="module")
def export_dir(straight, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("serve") / "export")
    assert export.main([f"--workdir={straight}", f"--out={out}", "--formats=stablehlo", "--batch=4",
                        "--platforms=cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def server(export_dir):
    # A batch waits up to 300 ms to fill: concurrent requests sent together land in one batch.
    with serving(export_dir, "--max_batch=4", "--max_wait_ms=300", "--queue_limit=6") as (url, _):
        yield url


def decoded(response: httpx.Response) -> np.ndarray:
    return np.stack([png.decode(base64.b64decode(image)) for image in response.json()["images"]])


REQUESTS = [{"prompt": "a handwritten 7", "seed": 1, "num": 1}, {"prompt": "the number 3", "seed": 2, "num": 2},
            {"prompt": "a handwritten 7", "seed": 3, "num": 1}]


def test_concurrent_requests_are_batched_and_each_seed_gives_the_same_images_alone(server, export_dir):
    together = post_all(server, [{"json": r} for r in REQUESTS])
    assert [r.status_code for r in together] == [200] * 3, [r.text for r in together]
    assert max(r.json()["batch_size"] for r in together) > 1  # batched
    alone = [post_all(server, [{"json": r}])[0] for r in REQUESTS]
    assert [r.json()["batch_size"] for r in alone] == [1, 2, 1]
    for request, batched, single in zip(REQUESTS, together, alone):
        assert decoded(batched).shape == (request["num"], 16, 16, 1)
        np.testing.assert_array_equal(decoded(batched), decoded(single))
    # The images of `seedjax.tools.sample --prompt="the number 3" --seed=2 --num=2` (test_export: the
    # exported program run directly equals it), as PNG levels.
    request = REQUESTS[1]
    expected = ExportedGenerator(export_dir).sample([request["prompt"]], request["num"], request["seed"], (16, 16))
    assert np.abs(decoded(alone[1]).astype(int) - png.to_uint8(expected)).max() <= 1
    metrics = httpx.get(server + "/metrics").text
    assert 'seedjax_batches_total{images="4"}' in metrics or 'seedjax_batches_total{images="3"}' in metrics


def test_a_batch_draws_each_requests_noise_from_its_own_seed(export_dir):
    model = ExportedGenerator(export_dir)
    for num in (1, 3):
        drawn = model.noise_of_seeds(np.array([5, 0, 7, 2**31 - 1]), num, (16, 16))
        for row, seed in zip(drawn, [5, 0, 7, 2**31 - 1]):
            np.testing.assert_array_equal(row, model.noise(seed, num, (16, 16)))


def test_requests_already_queued_join_the_batch_without_waiting():
    """max_wait 0: no waiting for company, but what queued up while the previous batch ran is one batch."""
    from seedjax.serving.batching import Batcher, Job

    class Model:  # the two calls a batch makes, recorded
        programs, calls = {(16, 16): None}, []

        def noise_of_seeds(self, seeds, num, size):
            return np.zeros((len(seeds), num, 4, 4), np.float32)

        def generate(self, captions, noise, guidance, size, first_frames=None):
            self.calls.append(len(captions))
            return np.zeros((len(captions), 16, 16, 1), np.float32)

    async def go():
        batcher = Batcher(Model(), max_batch=8, max_wait_s=0.0, queue_limit=8)
        loop = asyncio.get_running_loop()
        jobs = [Job(f"a {i}", i, 1, (16, 16), 1.0, loop.create_future()) for i in range(3)]
        for job in jobs:
            batcher.submit(job)
        worker = asyncio.create_task(batcher.run())
        results = await asyncio.gather(*(job.future for job in jobs))
        worker.cancel()
        return [r.batch_size for r in results]

    assert asyncio.run(go()) == [3, 3, 3] and Model.calls == [4]  # one batch, padded to the bucket of 4


@pytest.mark.parametrize("body, status, message", [
    ({"content": b"{not json"}, 400, "not valid JSON"),
    ({"json": ["a list"]}, 400, "valid dictionary"),
    ({"json": {"seed": 1}}, 400, "prompt"),
    ({"json": {"prompt": "a 7", "size": "20x20"}}, 400, "size"),
    ({"json": {"prompt": "a 7", "num": 5}}, 400, "num"),
    ({"json": {"prompt": "a 7", "num": 0}}, 400, "num"),
    ({"json": {"prompt": "a 7", "seed": -1}}, 400, "seed"),
    ({"json": {"prompt": "a 7", "seed": "1"}}, 400, "seed"),
    ({"json": {"prompt": "a 7", "guidance": -2.0}}, 400, "guidance"),
    ({"json": {"prompt": "a 7", "file": "/etc/passwd"}}, 400, "file"),
    ({"json": {"prompt": "x" * 20000}}, 413, "cap"),
])
def test_malformed_requests_get_a_one_line_4xx_and_the_server_keeps_serving(server, body, status, message):
    response = post_all(server, [body])[0]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error
    assert post_all(server, [{"json": {"prompt": "a 7"}}])[0].status_code == 200


def test_a_full_queue_answers_429(server):
    responses = post_all(server, [{"json": {"prompt": "a 7", "seed": i}} for i in range(14)])
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes  # at most 6 admitted at once (--queue_limit=6)
    assert codes.count(429) >= 14 - 6 - 4  # a batch of 4 may finish while the burst is still arriving
    assert "queue limit 6" in next(r for r in responses if r.status_code == 429).json()["error"]
    assert 'seedjax_responses_total{code="429"}' in httpx.get(server + "/metrics").text


def test_sigterm_answers_every_admitted_request_then_exits_0(export_dir):
    with serving(export_dir, "--max_batch=2", "--max_wait_ms=1500") as (url, proc):

        async def go():
            async with httpx.AsyncClient(timeout=120) as client:
                pending = [asyncio.create_task(client.post(url + "/v1/images", json={"prompt": "a 3", "seed": i}))
                           for i in range(3)]
                await asyncio.sleep(0.5)  # admitted; the first batch is still filling (1.5 s)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*pending)

        responses = asyncio.run(go())
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert all(len(r.json()["images"]) == 1 for r in responses)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert "every admitted request was answered" in out


def test_bad_flags_exit_2_with_one_line(export_dir, tmp_path, capsys):
    from seedjax import serve

    assert serve.main([f"--model={tmp_path}"]) == 2  # not an export directory
    assert "no manifest.json" in capsys.readouterr().err
    for flag in ("--queue_limit=0", "--port=70000", "--max_batch=2 --max_num=3", "--workers=2"):
        assert serve.main([f"--model={export_dir}", *flag.split()]) == 2
        err = capsys.readouterr().err.strip()
        assert err and "\n" not in err, err
    assert not os.listdir(tmp_path)
