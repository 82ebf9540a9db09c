"""Dynamic batching of image (or video) requests onto an exported generator.

Requests wait in a queue; one worker takes the oldest, then adds the requests of the same size
that are already queued, and waits for more until the batch holds `max_batch` images or
`max_wait_s` has passed since it started collecting; then it runs the batch in one call of the
StableHLO program. With `max_wait_s=0` batches are what queued up while the previous batch ran.
Batches are padded to the next power of two (up to max_batch) so that a few compiled shapes
serve every batch; all of them are compiled by `warmup` before the server accepts traffic.

Each request's starting noise comes from its own seed (`jax.random.normal(key(seed), (num, ...))`,
what `seedjax.tools.sample --seed --num` draws), never from the batch, so the images a request
gets do not depend on which other requests shared its batch.

Admission control: at most `queue_limit` requests are admitted and unanswered at once; one
more is refused at once (`QueueFull`, HTTP 429), so a burst cannot grow memory or latency
without bound.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import dataclasses
import time

import numpy as np

from seedjax.serving import png
from seedjax.serving.run_exported import ExportedGenerator


class QueueFull(Exception):
    pass


@dataclasses.dataclass
class Job:
    prompt: str
    seed: int
    num: int
    size: tuple[int, ...]  # (H, W), or a video's (F, H, W)
    guidance: float
    future: asyncio.Future
    first_frame: np.ndarray | None = None  # a video request's frame 0 [H, W, C] in [-1, 1] (image-to-video)
    admitted: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class Result:
    images: list  # base64 PNGs; a video request's: one list of frame PNGs per clip
    batch_size: int  # images in the batch this request ran in (padding excluded)
    queue_ms: float
    compute_ms: float


class Metrics:
    """Counters for /metrics (Prometheus text format)."""

    def __init__(self):
        self.responses = collections.Counter()  # HTTP status -> count
        self.batch_sizes = collections.Counter()  # images per batch -> batches
        self.images = 0
        self.compute_seconds = 0.0

    def text(self, queued: int, admitted: int) -> str:
        lines = ["# TYPE seedjax_responses_total counter"]
        lines += [f'seedjax_responses_total{{code="{c}"}} {n}' for c, n in sorted(self.responses.items())]
        lines += ["# TYPE seedjax_batches_total counter"]
        lines += [f'seedjax_batches_total{{images="{s}"}} {n}' for s, n in sorted(self.batch_sizes.items())]
        lines += ["# TYPE seedjax_images_total counter", f"seedjax_images_total {self.images}",
                  "# TYPE seedjax_compute_seconds_total counter", f"seedjax_compute_seconds_total {self.compute_seconds:.6f}",
                  "# TYPE seedjax_queued_requests gauge", f"seedjax_queued_requests {queued}",
                  "# TYPE seedjax_admitted_requests gauge", f"seedjax_admitted_requests {admitted}"]
        return "\n".join(lines) + "\n"


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get compiled: powers of two below max_batch, and max_batch."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class Batcher:
    def __init__(self, model: ExportedGenerator, max_batch: int, max_wait_s: float, queue_limit: int):
        self.model, self.max_batch, self.max_wait_s, self.queue_limit = model, max_batch, max_wait_s, queue_limit
        self.buckets = buckets(max_batch)
        self.metrics = Metrics()
        self.admitted = 0
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.carry: collections.deque[Job] = collections.deque()  # taken from the queue, left for the next batch
        # One thread runs the programs (they use every core); the event loop keeps answering meanwhile.
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="generate")

    def warmup(self) -> None:
        """Compile every bucket size for every exported size, and the noise of every request size
        (before the first request)."""
        for size in self.model.programs:
            for num in range(1, self.max_batch + 1):
                self.model.noise_of_seeds(np.zeros(self.max_batch // num, np.int32), num, size)
            for b in self.buckets:
                self.model.generate([""] * b, np.zeros((b, *self.model.sizes[size]["noise_shape"]), np.float32),
                                    np.full(b, self.model.default_guidance), size)

    def submit(self, job: Job) -> None:
        if self.admitted >= self.queue_limit:
            raise QueueFull(f"{self.admitted} requests are waiting (queue limit {self.queue_limit}); retry later")
        self.admitted += 1
        job.future.add_done_callback(lambda _: self._release())
        self.queue.put_nowait(job)

    def _release(self) -> None:
        self.admitted -= 1

    async def run(self) -> None:
        """The worker: forever, form a batch and run it."""
        loop = asyncio.get_running_loop()
        while True:
            first = self.carry.popleft() if self.carry else await self.queue.get()
            batch, images = [first], first.num
            deadline = loop.time() + self.max_wait_s
            while images < self.max_batch:
                if self.carry:
                    job = self.carry.popleft()
                elif not self.queue.empty():  # already waiting: joins whatever the deadline
                    job = self.queue.get_nowait()
                elif loop.time() < deadline:
                    try:
                        job = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                    except TimeoutError:
                        break
                else:
                    break
                if job.size != first.size or images + job.num > self.max_batch:
                    self.carry.appendleft(job)
                    break
                batch.append(job)
                images += job.num
            await self._run(batch, images)

    async def _run(self, batch: list[Job], images: int) -> None:
        started = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self._generate, batch, images)
        except Exception as e:  # a failed batch fails its requests (HTTP 500), not the server
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        compute = time.perf_counter() - started
        self.metrics.batch_sizes[images] += 1
        self.metrics.images += images
        self.metrics.compute_seconds += compute
        for job, encoded in zip(batch, outputs):
            if not job.future.done():  # the client may have gone away
                job.future.set_result(Result(encoded, images, (started - job.admitted) * 1e3, compute * 1e3))

    def _generate(self, batch: list[Job], images: int) -> list[list[str]]:
        size = batch[0].size
        captions = [job.prompt for job in batch for _ in range(job.num)]
        noise = self._noise(batch, size)
        guidance = np.concatenate([np.full(job.num, job.guidance, np.float32) for job in batch])
        firsts = [job.first_frame for job in batch for _ in range(job.num)]
        padded = next(b for b in self.buckets if b >= images)
        pad = padded - images  # rows of repeated inputs whose outputs are dropped
        pixels = self.model.generate(captions + captions[:1] * pad, np.concatenate([noise, noise[:1].repeat(pad, 0)]),
                                     np.concatenate([guidance, guidance[:1].repeat(pad)]), size,
                                     firsts + firsts[:1] * pad)[:images]
        encoded = [_base64_png(sample) for sample in png.to_uint8(pixels)]
        out, start = [], 0
        for job in batch:
            out.append(encoded[start:start + job.num])
            start += job.num
        return out

    def _noise(self, batch: list[Job], size: tuple[int, ...]) -> np.ndarray:
        """Each request's noise from its own seed, drawn per request size in one call over the
        batch's seeds (padded to max_batch // num seeds: one compiled shape per num)."""
        rows = [None] * len(batch)
        for num in {job.num for job in batch}:
            index = [i for i, job in enumerate(batch) if job.num == num]
            seeds = np.zeros(self.max_batch // num, np.int32)
            seeds[:len(index)] = [batch[i].seed for i in index]
            drawn = self.model.noise_of_seeds(seeds, num, size)
            for row, i in enumerate(index):
                rows[i] = drawn[row]
        return np.concatenate(rows)


def _base64_png(sample: np.ndarray):
    """uint8 [H, W, C] -> a base64 PNG; a clip [F, H, W, C] -> one per frame."""
    if sample.ndim == 4:
        return [_base64_png(frame) for frame in sample]
    return base64.b64encode(png.encode(sample)).decode("ascii")
