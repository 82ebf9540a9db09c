"""The HTTP API of `python -m seedjax.serve` (FastAPI): POST /v1/images (or /v1/videos), GET /healthz, GET /metrics.

    POST /v1/images  {"prompt": "a handwritten 7", "seed": 0, "num": 1, "size": "16x16", "guidance": 3.0}
      -> 200 {"images": [base64 PNG, ...], "size", "seed", "num", "guidance", "batch_size", "queue_ms", "compute_ms"}
    POST /v1/videos  {"prompt": "shot 1: a red 3 moving left; shot 2: a blue 5 moving up", "size": "4x16x16",
                      "first_frame": base64 PNG of one HxW frame (optional: image-to-video), ...the rest as above}
      -> 200 {"videos": [[base64 PNG of each frame, ...] per clip], "frames", ...the rest as above}

A video export (sizes FxHxW) answers /v1/videos, an image export /v1/images; the other path
gets a 400 that names the right one.

Only `prompt` is required; `size` defaults to the first exported size, `guidance` to the
exported sampler's scale. The same prompt, seed, num and size always give the same images,
alone or batched with other requests, and they are the images of `seedjax.tools.sample
--prompt --seed --num` on the exported checkpoint. Errors are one line, {"error": "..."}: 400 for
a body that is not a JSON object of these fields with valid values, 413 for a body over the
size cap, 429 when the queue is full, 500 if generation failed. Nothing in a request names a
file: the server reads files only at start-up (JSON, safetensors, StableHLO).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json

import numpy as np
import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from seedjax.serving.batching import Batcher, Job, QueueFull
from seedjax.serving.run_exported import ExportedGenerator, size_name, split_shots

MAX_SEED = 2**31 - 1
MAX_GUIDANCE = 50.0


class ImageRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    prompt: str
    seed: int = 0
    num: int = 1
    size: str | None = None
    guidance: float | int | None = None


class VideoRequest(ImageRequest):
    first_frame: str | None = None  # base64 PNG, the clip's frame 0 (image-to-video)


def decode_frame(text: str, height: int, width: int, channels: int) -> np.ndarray:
    """A base64 PNG of exactly HxW -> [H, W, C] pixels in [-1, 1]. Pillow reads the header first,
    so a small body that claims a huge image is refused before anything is decompressed."""
    from PIL import Image  # only image-to-video requests need it

    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)), formats=["PNG"])
    except (binascii.Error, ValueError, OSError) as e:
        raise ValueError(f"first_frame: not a base64 PNG ({type(e).__name__})") from None
    if image.size != (width, height):
        raise ValueError(f"first_frame: {image.size[1]}x{image.size[0]} PNG; this size takes {height}x{width}")
    try:
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.float32)
    except OSError as e:
        raise ValueError(f"first_frame: unreadable PNG ({e})") from None
    return pixels.reshape(height, width, channels) / 127.5 - 1.0


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.replace("\n", " ")}, status_code=status)


def _validation_message(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The body, or None as soon as it is known to be over `cap` bytes: from its declared length, or
    while it streams in (a chunked body declares none), so an oversize body is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


def create_app(model: ExportedGenerator, batcher: Batcher, max_num: int, max_prompt_chars: int = 1000,
               max_body_bytes: int = 16384) -> FastAPI:
    sizes = {size_name(size): size for size in model.programs}
    path, kind = ("/v1/videos", "videos") if model.is_video else ("/v1/images", "images")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()  # uvicorn calls this after every open request was answered (graceful shutdown)

    app = FastAPI(title="seedjax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def check(request: ImageRequest) -> tuple[tuple[int, ...], float]:
        if not request.prompt.strip() or len(request.prompt) > max_prompt_chars:
            raise ValueError(f"prompt: must be 1 to {max_prompt_chars} characters")
        if not 0 <= request.seed <= MAX_SEED:
            raise ValueError(f"seed: must be in [0, {MAX_SEED}]")
        if not 1 <= request.num <= max_num:
            raise ValueError(f"num: must be in [1, {max_num}] ({kind} per request)")
        size = sizes.get(request.size) if request.size is not None else model.default_size
        if size is None:
            raise ValueError(f"size: {request.size!r} is not served (sizes: {', '.join(sizes)})")
        if model.is_video and len(split_shots(request.prompt)) > model.sizes[size]["max_shots"]:
            raise ValueError(f"prompt: {len(split_shots(request.prompt))} shots; this model takes at most "
                             f"{model.sizes[size]['max_shots']} ('shot 1: ...; shot 2: ...')")
        if request.guidance is None:
            return size, model.default_guidance
        if model.guidance_kind is None:
            raise ValueError("guidance: this model samples unguided (no CFG, no guidance embedder)")
        if not 0 < request.guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance: must be in (0, {MAX_GUIDANCE}]")
        return size, float(request.guidance)

    @app.post(path)
    async def generate(request: Request):
        body = await _read_capped(request, max_body_bytes)
        if body is None:
            return respond(_error(413, f"request body is over the {max_body_bytes}-byte cap"))
        first = None
        try:
            parsed = (VideoRequest if model.is_video else ImageRequest).model_validate(json.loads(body))
            size, guidance = check(parsed)
            if getattr(parsed, "first_frame", None) is not None:
                first = decode_frame(parsed.first_frame, size[-2], size[-1], model.sizes[size]["channels"])
        except json.JSONDecodeError as e:
            return respond(_error(400, f"body is not valid JSON ({e})"))
        except pydantic.ValidationError as e:
            return respond(_error(400, _validation_message(e)))
        except ValueError as e:
            return respond(_error(400, str(e)))
        job = Job(parsed.prompt, parsed.seed, parsed.num, size, guidance, asyncio.get_running_loop().create_future(),
                  first)
        try:
            batcher.submit(job)
        except QueueFull as e:
            return respond(_error(429, str(e)))
        try:
            result = await job.future
        except Exception as e:  # noqa: BLE001  (a failed batch, or a prompt the program refuses: one line)
            return respond(_error(500, f"generation failed: {type(e).__name__}: {e}"))
        out = {kind: result.images, "format": "png", "size": size_name(size), "seed": parsed.seed, "num": parsed.num,
               "guidance": guidance, "batch_size": result.batch_size, "queue_ms": round(result.queue_ms, 2),
               "compute_ms": round(result.compute_ms, 2)}
        return respond(JSONResponse(out | ({"frames": size[0]} if model.is_video else {})))

    @app.post("/v1/images" if model.is_video else "/v1/videos")
    async def wrong_kind(request: Request):
        return respond(_error(400, f"this model generates {kind}: POST {path}"))

    def respond(response: JSONResponse) -> JSONResponse:
        batcher.metrics.responses[response.status_code] += 1
        return response

    @app.get("/healthz")
    async def healthz():
        manifest = model.manifest
        return {"status": "ok", "kind": manifest.get("kind", "image"), "stage": manifest["stage"], "nfe": manifest["nfe"], "sizes": list(sizes),
                "max_batch": batcher.max_batch, "quantization": manifest["quantization"]["method"]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(batcher.metrics.text(batcher.queue.qsize() + len(batcher.carry), batcher.admitted))

    return app
