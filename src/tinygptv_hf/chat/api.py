"""`tinygptv serve --api`: an OpenAI-compatible HTTP server (`/v1/chat/completions`, `/v1/models`) for any client.

transformers' own `transformers serve` cannot load a remote-code model (docs/serve-http.md#why-not-transformers-serve),
so this is a small FastAPI app. What is reusable is reused: the `openai` package's response types, transformers'
`CancelOnDisconnect` middleware (a client that leaves stops its generation), the checkpoint's chat template, the
image loading of the processor and the chat's `GenerationSettings`; concurrent requests share forward passes through
`BatchScheduler`. Every refused request gets an OpenAI-style error object, `{"error": {"message", "type", "param",
"code"}}`, that names the problem and how to fix it.
"""

import asyncio
import base64
import binascii
import io
import json
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from ..grounding import parse_grounded_text
from ..processors import ImageLoadError, load_image, to_rgb
from ..processors.templates import MAX_NEW_TOKENS, TASK_TOKENS
from .batching import BatchScheduler, Job
from .generation import GenerationSettings, load_chat_model

INSTALL_HINT = "the HTTP server needs FastAPI, uvicorn and openai: pip install 'tinygptv-hf[serve]'"
MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Far above any photo, far below what would exhaust memory once decoded (PIL's own bomb check starts at 89 M)
MAX_IMAGE_PIXELS = 40_000_000
# Stage-4 tasks (all about a picture) whose answers' boxes are returned parsed
BOX_TASKS = ("[refer]", "[grounding]", "[detection]")


class ApiError(Exception):
    """A request the server refuses, answered as OpenAI answers it."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def _import_server():
    try:
        import fastapi
        import openai.types.chat
        import uvicorn
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(INSTALL_HINT) from error
    return fastapi, openai, uvicorn


def _request_types():
    """The request's schema (pydantic, which FastAPI brings): what this server reads of OpenAI's, unknown fields
    ignored as OpenAI-compatible servers do."""
    from pydantic import BaseModel, Field

    class ImageUrl(BaseModel):
        url: str
        detail: str | None = None

    class Part(BaseModel):
        type: Literal["text", "image_url"]
        text: str | None = None
        image_url: ImageUrl | None = None

    class Message(BaseModel):
        role: Literal["system", "developer", "user", "assistant"]
        content: str | list[Part] | None = None

    class StreamOptions(BaseModel):
        include_usage: bool = False

    class ChatRequest(BaseModel):
        model: str
        messages: list[Message] = Field(min_length=1)
        max_tokens: int | None = Field(None, ge=1)
        max_completion_tokens: int | None = Field(None, ge=1)
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, gt=0, le=1)
        stop: str | list[str] | None = None
        stream: bool = False
        stream_options: StreamOptions | None = None
        n: int = Field(1, ge=1, le=1)

    return ChatRequest


@dataclass
class Prepared:
    """A request turned into model inputs, with what its response needs."""

    inputs: dict
    settings: GenerationSettings
    stops: tuple[str, ...]
    image: Image.Image | None  # the last picture, which the answer's boxes refer to
    boxes: bool


class ChatCompletions:
    """Requests -> prepared jobs -> responses, for one model under one name."""

    def __init__(self, processor, name: str, allow_image_urls: bool = False):
        self.processor = processor
        self.name = name
        self.allow_image_urls = allow_image_urls

    # ----- the request -----

    def prepare(self, request) -> Prepared:
        if request.model != self.name:
            raise ApiError(
                f"The model {request.model!r} does not exist here; this server serves {self.name!r} (GET /v1/models).",
                "model",
                "model_not_found",
                404,
            )
        messages, images = [], []
        for index, message in enumerate(request.messages):
            text = isinstance(message.content, str)
            content = [{"type": "text", "text": message.content}] if text else []
            for part in [] if text else message.content or []:
                if part.type == "text":
                    content.append({"type": "text", "text": part.text or ""})
                elif part.image_url is None:
                    raise ApiError("An image_url part needs an image_url.url.", f"messages[{index}].content")
                else:
                    images.append(self.open_image(part.image_url.url, f"messages[{index}].content"))
                    content.append({"type": "image"})
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": content})
        question = _last_user_text(messages)
        task = next((token for token in TASK_TOKENS if question.lstrip().startswith(token)), None)
        if task is not None and not images:
            raise ApiError(
                f"{task} asks about a picture but the request has none; add an image_url part with a data URL "
                "(data:image/png;base64,...).",
                "messages",
                "image_required",
            )
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        try:
            inputs = self.processor(images=images or None, text=[prompt], return_tensors="pt")
        except ValueError as error:  # the processor's "longer than the context"
            raise ApiError(str(error), "messages", "context_length_exceeded") from error
        return Prepared(
            inputs=dict(inputs),
            settings=self.settings(request, inputs["input_ids"].shape[1]),
            stops=self.stops(request.stop),
            image=images[-1] if images else None,
            boxes=task in BOX_TASKS,
        )

    def settings(self, request, prompt_tokens: int) -> GenerationSettings:
        """Sampling as the chat samples by default; temperature 0 is greedy. The answer must fit the context."""
        room = self.processor.context_length - prompt_tokens
        asked = request.max_completion_tokens or request.max_tokens
        if asked is not None and asked > room:
            raise ApiError(
                f"max_tokens is {asked}, but the prompt takes {prompt_tokens} of the model's "
                f"{self.processor.context_length}-token context, which leaves room for {room}; ask for at most {room}.",
                "max_tokens",
                "context_length_exceeded",
            )
        if room < 1:
            raise ApiError(
                f"The prompt takes {prompt_tokens} tokens, the whole {self.processor.context_length}-token context; "
                "shorten the conversation.",
                "messages",
                "context_length_exceeded",
            )
        defaults = GenerationSettings()
        return GenerationSettings(
            max_new_tokens=asked or min(MAX_NEW_TOKENS, room),
            temperature=request.temperature or defaults.temperature,
            top_p=request.top_p if request.top_p is not None else defaults.top_p,
            greedy=request.temperature == 0,
        )

    def stops(self, stop) -> tuple[str, ...]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or not all(stops):
            raise ApiError("stop takes at most 4 strings, none of them empty.", "stop")
        return tuple(symbol for symbol in dict.fromkeys([self.processor.end_symbol, *stops]) if symbol)

    def open_image(self, url: str, param: str) -> Image.Image:
        """A data URL's picture (or an http(s) URL's when allowed), decoded within the size limits."""
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if not header.endswith(";base64"):
                raise ApiError(
                    "An image data URL must be base64: data:image/png;base64,....", param, "invalid_image"
                )
            if len(payload) * 3 // 4 > MAX_IMAGE_BYTES:
                raise ApiError(f"The image is over {MAX_IMAGE_BYTES // 2**20} MB; send a smaller one.", param)
            try:
                data = base64.b64decode(payload, validate=True)
            except binascii.Error as error:
                raise ApiError(
                    f"The image data URL is not valid base64: {error}.", param, "invalid_image"
                ) from error
        elif url.startswith(("http://", "https://")):
            if not self.allow_image_urls:
                raise ApiError(
                    "This server does not fetch image URLs; send the picture as a data URL (data:image/png;base64,...) "
                    "or start the server with --allow-image-urls.",
                    param,
                    "image_url_not_allowed",
                )
            data = _fetch(url, param)
        else:
            raise ApiError("An image URL must be a data: URL (or http(s): with --allow-image-urls).", param)
        return _decode(data, param)

    # ----- the response -----

    def completion(self, prepared: Prepared, text: str, reason: str, completion_tokens: int):
        from openai.types.chat import ChatCompletion, ChatCompletionMessage
        from openai.types.chat.chat_completion import Choice

        message = ChatCompletionMessage(role="assistant", content=text, **self.boxes(prepared, text))
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            object="chat.completion",
            created=int(time.time()),
            model=self.name,
            choices=[Choice(index=0, message=message, finish_reason=reason)],
            usage=self.usage(prepared, completion_tokens),
        )

    def usage(self, prepared: Prepared, completion_tokens: int):
        from openai.types.completion_usage import CompletionUsage

        prompt_tokens = prepared.inputs["input_ids"].shape[1]
        return CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    @staticmethod
    def boxes(prepared: Prepared, text: str) -> dict:
        """`boxes`, an extension field: a box task's boxes in pixels of the request's last picture."""
        if not prepared.boxes or prepared.image is None:
            return {}
        found = parse_grounded_text(text, *prepared.image.size)
        return {
            "boxes": [
                {"phrase": box.phrase, "box": list(box.box), "normalized": list(box.normalized)}
                for box in found
            ]
        }


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return " ".join(part["text"] for part in message["content"] if part["type"] == "text")
    raise ApiError("The conversation has no user message; add one with the question.", "messages")


def _fetch(url: str, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = response.read(MAX_IMAGE_BYTES + 1)
    except OSError as error:
        raise ApiError(f"Cannot fetch the image at {url}: {error}.", param, "invalid_image") from error
    if len(data) > MAX_IMAGE_BYTES:
        raise ApiError(f"The image at {url} is over {MAX_IMAGE_BYTES // 2**20} MB.", param, "invalid_image")
    return data


def _decode(data: bytes, param: str) -> Image.Image:
    """Decode, refusing a picture whose header promises more pixels than `MAX_IMAGE_PIXELS` before decoding it."""
    try:
        header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        header = None
        reason = str(error)
    except Exception as error:  # PIL's many ways of saying "not an image"
        raise ApiError(
            f"The upload is not an image ({type(error).__name__}); send a PNG, JPEG, WebP or another image file.",
            param,
            "invalid_image",
        ) from error
    if header is None or header.width * header.height > MAX_IMAGE_PIXELS:
        size = f"{header.width}x{header.height}" if header is not None else reason
        raise ApiError(
            f"The image is too large ({size}); send one of at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels "
            "(the model sees it at 224 or 448 pixels anyway).",
            param,
            "invalid_image",
        )
    try:
        return to_rgb(load_image(header, name="data"))
    except ImageLoadError as error:
        raise ApiError(
            f"{error}; send a complete PNG, JPEG, WebP or another image file.", param, "invalid_image"
        ) from error


def build_app(model, processor, name: str, max_batch: int = 8, allow_image_urls: bool = False):
    """The FastAPI app serving `model` as `name`; its `state.scheduler` is the `BatchScheduler` behind it."""
    fastapi, openai, _ = _import_server()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from openai.types import Model
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta
    from pydantic import ValidationError
    from transformers.cli.serving.utils import CancelOnDisconnect

    ChatRequest = _request_types()
    scheduler = BatchScheduler(model, processor, max_batch)
    completions = ChatCompletions(processor, name, allow_image_urls)
    created = int(time.time())
    # One thread prepares the requests: a fast tokenizer used from two threads at once can fail ("Already borrowed")
    preparing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinygptv-prepare")
    app = fastapi.FastAPI(title="TinyGPT-V", openapi_url=None)
    app.state.scheduler = scheduler
    app.add_middleware(CancelOnDisconnect)

    @app.exception_handler(ApiError)
    async def refused(_request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error):
        return JSONResponse(ApiError(str(error)).body(), status_code=400)

    @app.get("/health")
    async def health():
        sizes = scheduler.batch_sizes
        return {"status": "ok", "batches": len(sizes), "largest_batch": max(sizes, default=0)}

    @app.get("/v1/models")
    async def models():
        model_card = Model(id=name, object="model", created=created, owned_by="tinygptv-hf")
        return {"object": "list", "data": [model_card.model_dump()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: fastapi.Request):
        raw = await request.body()
        try:
            body = ChatRequest.model_validate(json.loads(raw))
        except json.JSONDecodeError as error:
            raise ApiError(f"The request body is not valid JSON ({error}); send a JSON object.") from error
        except ValidationError as error:
            problems = error.errors()
            where = [".".join(str(part) for part in problem["loc"]) for problem in problems]
            message = "; ".join(
                f"{place}: {problem['msg']} (got {problem.get('input')!r:.60})"
                for place, problem in zip(where, problems, strict=True)
            )
            raise ApiError(
                f"The request does not follow the chat completions schema: {message}.", where[0]
            ) from error
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        with scheduler.arriving():
            prepared = await loop.run_in_executor(preparing, completions.prepare, body)
            job = Job(
                prepared.inputs,
                prepared.settings,
                prepared.stops,
                deliver=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
            )
            scheduler.submit(job)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                stream(job, events, prepared, include_usage), media_type="text/event-stream"
            )
        try:
            pieces = []
            while (event := await events.get())[0] == "text":
                pieces.append(event[1])
        finally:
            job.cancelled.set()  # ends its row if the client left (CancelOnDisconnect cancels this task)
        if event[0] == "error":
            raise ApiError(event[1], status=500, code="generation_failed")
        return JSONResponse(
            completions.completion(prepared, "".join(pieces), event[1], event[2]).model_dump(
                exclude_none=True
            )
        )

    async def stream(job: Job, events: asyncio.Queue, prepared: Prepared, include_usage: bool):
        chunk_id, started = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, reason=None, usage=None) -> str:
            choices = (
                [Choice(index=0, delta=ChoiceDelta(**delta), finish_reason=reason)]
                if delta is not None
                else []
            )
            event = ChatCompletionChunk(
                id=chunk_id,
                object="chat.completion.chunk",
                created=started,
                model=name,
                choices=choices,
                usage=usage,
            )
            return f"data: {event.model_dump_json(exclude_none=True)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            text = ""
            while (event := await events.get())[0] == "text":
                text += event[1]
                yield chunk({"content": event[1]})
            if event[0] == "error":
                yield f"data: {json.dumps(ApiError(event[1], status=500, code='generation_failed').body())}\n\n"
                return
            yield chunk(completions.boxes(prepared, text), reason=event[1])
            if include_usage:
                yield chunk(None, usage=completions.usage(prepared, event[2]))
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()

    return app


def serve_api(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    quantization: str | None = None,
    name: str | None = None,
    max_batch: int = 8,
    allow_image_urls: bool = False,
) -> None:
    """Load the checkpoint and serve it until interrupted."""
    _, _, uvicorn = _import_server()  # a missing extra fails before the slow model load
    name = name or (Path(model).name if Path(model).is_dir() else model)
    app = build_app(*load_chat_model(model, quantization), name, max_batch, allow_image_urls)
    print(f"Serving {name} at http://{host}:{port}/v1 (OpenAI chat completions)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
