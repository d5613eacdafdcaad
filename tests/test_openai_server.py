"""`tinygptv serve --api` as a client meets it: the real server process on a tiny checkpoint, the official `openai`
client, streamed and whole answers, concurrent requests batched with the answers they get alone, boxes of the
grounding tasks, and bad requests answered with OpenAI-style error objects while the server keeps serving.

The tiny checkpoint is random, so it is first taught two grounding answers (its language model, on precomputed image
features, a few seconds) to have a real model write boxes.
"""

import base64
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import httpx
import openai
import pytest
import torch
from test_serve_browser import RED_SQUARE, free_port, wait_for_http
from transformers import AutoModelForImageTextToText, AutoProcessor

from tinygptv_hf.grounding import parse_grounded_text
from tinygptv_hf.processors import load_image, to_rgb

EXAMPLE = resources.files("tinygptv_hf") / "resources" / "example_shapes.png"
NAME = "tiny-boxes"
TAUGHT = {
    "[refer] the red square": "<p>red square</p> {<10><20><40><70>}",
    "[grounding] describe the picture": "<p>a red square</p> {<10><20><40><70>} and <p>a blue circle</p> "
    "{<55><40><85><80>}",
}


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def ask(question: str, image: str | None = None) -> list[dict]:
    content = [{"type": "text", "text": question}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return [{"role": "user", "content": content}]


def teach(model, processor, image, answers: dict[str, str], steps: int = 400) -> None:
    """Train the language model until greedy decoding gives each question's answer (prompt and answer tokenized
    apart, as generation sees them; the image features are computed once, the vision side stays as it was)."""
    rows = []
    for question, answer in answers.items():
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor(
            images=[image],
            text=[processor.apply_chat_template(messages, add_generation_prompt=True)],
            return_tensors="pt",
        )
        target = processor.tokenizer(
            answer + processor.end_symbol, add_special_tokens=False, return_tensors="pt"
        )["input_ids"]
        rows.append((torch.cat([prompt["input_ids"], target], 1), target))
    with torch.no_grad():
        features = model.model.get_image_features(prompt["pixel_values"], return_dict=True).pooler_output
    weights = [p for name, p in model.named_parameters() if "language_model" in name or "lm_head" in name]
    optimizer = torch.optim.Adam(weights, lr=1e-2)
    for _ in range(steps):
        total = 0.0
        for ids, target in rows:
            embeds = model.model.embed_tokens(ids)
            embeds = embeds.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), features)
            hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
            logits = model.lm_head(hidden[0, -target.shape[1] - 1 : -1])
            loss = torch.nn.functional.cross_entropy(logits, target[0])
            loss.backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad()
        if total < 0.02:
            return
    raise AssertionError(f"the tiny model did not learn the grounding answers (loss {total:.3f})")


@pytest.fixture(scope="module")
def box_checkpoint(tiny_checkpoint, tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("api") / NAME
    shutil.copytree(tiny_checkpoint, folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    teach(model, AutoProcessor.from_pretrained(folder), to_rgb(load_image(EXAMPLE)), TAUGHT)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(box_checkpoint):
    port = free_port()
    command = [str(Path(sys.executable).with_name("tinygptv")), "serve", str(box_checkpoint), "--api"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", timeout=120, process=process)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def image():
    return data_url(EXAMPLE.read_bytes())


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == [NAME]


def test_image_question_whole_and_streamed_give_the_same_answer(client, image):
    request = dict(model=NAME, messages=ask("What is in the picture?", image), temperature=0, max_tokens=10)
    whole = client.chat.completions.create(**request)
    (choice,) = whole.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = whole.usage
    assert 32 < usage.prompt_tokens and 1 <= usage.completion_tokens <= 10  # 32 image tokens in the prompt
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(
        client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == (
        choice.message.content
    )
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == choice.finish_reason
    assert chunks[-1].usage == usage and len(chunks) > 3  # the answer came in pieces


def test_eight_concurrent_requests_are_batched_and_answered_as_alone(client, image, server):
    questions = [f"What is shape number {index}?" for index in range(8)]

    def answer(question):
        reply = client.chat.completions.create(
            model=NAME, messages=ask(question, image), temperature=0, max_tokens=12
        )
        return reply.choices[0].message.content

    alone = [answer(question) for question in questions]
    before = httpx.get(f"{server}/health").json()["batches"]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(answer, questions))
    assert together == alone
    health = httpx.get(f"{server}/health").json()
    assert health["largest_batch"] > 1 and health["batches"] - before < len(questions)


@pytest.mark.parametrize("question", TAUGHT)
def test_grounding_answers_carry_boxes_that_parse(client, image, question):
    reply = client.chat.completions.create(
        model=NAME, messages=ask(question, image), temperature=0, max_tokens=60
    )
    message = reply.choices[0].message
    assert message.content == TAUGHT[question] and reply.choices[0].finish_reason == "stop"
    boxes = parse_grounded_text(message.content, 400, 300)
    assert boxes[0].box == RED_SQUARE
    assert message.model_extra["boxes"] == [
        {"phrase": box.phrase, "box": list(box.box), "normalized": list(box.normalized)} for box in boxes
    ]
    streamed = client.chat.completions.create(
        model=NAME, messages=ask(question, image), temperature=0, max_tokens=60, stream=True
    )
    last = [chunk for chunk in streamed if chunk.choices][-1]
    assert last.choices[0].delta.model_extra["boxes"] == message.model_extra["boxes"]


def test_stop_strings_end_the_answer(client, image):
    reply = client.chat.completions.create(
        model=NAME, messages=ask("[refer] the red square", image), temperature=0, stop=["</p>"]
    )
    assert reply.choices[0].message.content == "<p>red square" and reply.choices[0].finish_reason == "stop"


def huge_png(side: int = 20000) -> bytes:
    """A real 20000 x 20000 PNG (1-bit, all black) of about 50 kB, written without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes(side // 8)) * 500
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(rows) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def bad_requests():
    png = EXAMPLE.read_bytes()
    good = {"model": NAME, "messages": ask("hi", data_url(png)), "max_tokens": 2}
    return {
        "no image for a grounding task": ({**good, "messages": ask("[refer] the red square")}, 400, "image"),
        "not an image": (
            {**good, "messages": ask("hi", data_url(b"plain text", "text/plain"))},
            400,
            "not an image",
        ),
        "truncated image": (
            {**good, "messages": ask("hi", data_url(png[: len(png) // 2]))},
            400,
            "truncated",
        ),
        "20000x20000 image": ({**good, "messages": ask("hi", data_url(huge_png()))}, 400, "too large"),
        "image URL not allowed": (
            {**good, "messages": ask("hi", "http://127.0.0.1:9/a.png")},
            400,
            "allow-image-urls",
        ),
        "unknown model": ({**good, "model": "gpt-4o"}, 404, "does not exist"),
        "max_tokens past the context": ({**good, "max_tokens": 5000}, 400, "context"),
        "malformed JSON": (b'{"model": "tiny-boxes", "messages": [', 400, "not valid JSON"),
        "wrong field type": ({**good, "messages": "hi"}, 400, "messages"),
    }


@pytest.mark.parametrize("case", bad_requests())
def test_bad_requests_get_an_error_object_and_the_server_keeps_serving(client, server, image, case):
    body, status, words = bad_requests()[case]
    content = body if isinstance(body, bytes) else None
    response = httpx.post(
        f"{server}/v1/chat/completions",
        json=None if content else body,
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert client.chat.completions.create(model=NAME, messages=ask("hi", image), max_tokens=2).choices


def test_the_openai_client_raises_the_error_it_documents(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=ask("hi"))
    with pytest.raises(openai.BadRequestError, match="asks about a picture"):
        client.chat.completions.create(model=NAME, messages=ask("[grounding] the picture"))
