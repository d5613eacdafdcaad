"""The chat: its answer path with a real tiny checkpoint, and `tinygptv chat` driven through a pseudo-terminal."""

import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from tinygptv_hf.chat import ChatSession, GenerationSettings, ModelStream, load_chat_model, until_end_symbol
from tinygptv_hf.chat.terminal import printable
from tinygptv_hf.checkpoint import init_checkpoint
from tinygptv_hf.grounding import PALETTE
from tinygptv_hf.processors import ImageLoadError

EXAMPLE = resources.files("tinygptv_hf") / "resources" / "example_shapes.png"
TINYGPTV = Path(sys.executable).with_name("tinygptv")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return init_checkpoint("tiny", tmp_path_factory.mktemp("chat") / "tiny")


@pytest.fixture(scope="module")
def model_stream(checkpoint):
    return ModelStream(*load_chat_model(str(checkpoint)))


def replaying(*replies, calls=None):
    """A stream function that answers each question with the next reply's pieces, noting what it was sent."""
    queue = [list(reply) for reply in replies]

    def stream(messages, images, settings):
        if calls is not None:
            calls.append((messages, images, settings))
        yield from queue.pop(0)

    return stream


@pytest.mark.parametrize(
    "pieces,expected",
    [
        (["a cat", " sits", "###", "junk"], "a cat sits"),
        (["a cat#", "#", "# and more"], "a cat"),
        (["a cat ", "#", "#"], "a cat ##"),  # only a complete symbol ends the answer
        (["###"], ""),
        (["no end"], "no end"),
    ],
)
def test_until_end_symbol(pieces, expected):
    assert "".join(until_end_symbol(pieces, "###")) == expected


def test_until_end_symbol_never_shows_part_of_the_symbol():
    shown = list(until_end_symbol(["ab#", "#", "#cd"], "###"))
    assert shown == ["ab"]


def test_session_builds_messages_and_keeps_only_finished_turns():
    calls = []
    session = ChatSession(
        replaying(["one", "###"], ["two"], ["cut", " short"], calls=calls), image=Image.new("RGB", (8, 6))
    )
    assert "".join(session.ask("first?")) == "one"
    assert "".join(session.ask("second?")) == "two"
    assert session.turns == [("first?", "one"), ("second?", "two")]
    messages, images, settings = calls[1]
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image"}
    assert messages[2]["content"] == [{"type": "text", "text": "second?"}]
    assert images == [session.image] and settings == GenerationSettings()

    interrupted = session.ask("third?")
    assert next(interrupted) == "cut"
    interrupted.close()
    assert len(session.turns) == 2
    session.reset()
    assert session.turns == [] and session.image is not None


def test_new_image_starts_a_new_conversation_and_bad_images_are_reported(tmp_path):
    session = ChatSession(replaying(["fine"]), image=EXAMPLE)
    "".join(session.ask("hi"))
    session.set_image(Image.new("L", (30, 10)))
    assert session.turns == [] and session.image.mode == "RGB"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(ImageLoadError, match="broken.png"):
        session.set_image(broken)


def test_grounded_answer_gives_boxes_in_pixels_and_an_annotated_image():
    session = ChatSession(replaying(["<p>red square</p> ", "{<10><20><40><70>}###"]), image=EXAMPLE)
    "".join(session.ask("[refer] the red square"))
    (box,) = session.boxes()
    assert box.phrase == "red square" and box.box == (40, 60, 160, 210)
    assert session.annotated_image().getpixel((40, 135)) == PALETTE[0]


def test_generation_settings():
    assert GenerationSettings(greedy=True).generate_kwargs(room=50) == {
        "max_new_tokens": 50,
        "repetition_penalty": 1.05,
        "do_sample": False,
    }
    assert GenerationSettings(max_new_tokens=20).generate_kwargs(room=500)["max_new_tokens"] == 20
    for bad in ({"temperature": 0}, {"top_p": 1.5}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)


def test_model_stream_answers_two_turns_with_the_checkpoint_template(model_stream):
    calls = []

    def recording(messages, images, settings):
        calls.append(model_stream.processor.apply_chat_template(messages, add_generation_prompt=True))
        yield from model_stream(messages, images, settings)

    session = ChatSession(
        recording, GenerationSettings(max_new_tokens=6), model_stream.end_symbol, image=EXAMPLE
    )
    first = "".join(session.ask("What is in the picture?"))
    "".join(session.ask("And its colour?"))
    assert len(session.turns) == 2 and session.turns[0] == ("What is in the picture?", first.strip())
    assert calls[1].count("<ImageHere>") == 1
    assert calls[1].endswith(f"{first.strip()}###Human: And its colour?###Assistant: ")


def test_model_stream_rejects_an_over_long_conversation_and_keeps_the_old_one(model_stream):
    session = ChatSession(model_stream, GenerationSettings(max_new_tokens=2), image=EXAMPLE)
    "".join(session.ask("hello"))
    with pytest.raises(ValueError, match="context"):
        "".join(session.ask("word " * 2000))
    assert [question for question, _ in session.turns] == ["hello"]


def test_closing_the_stream_stops_generation(model_stream):
    stream = model_stream(ChatSession(None).messages("hi"), [], GenerationSettings(max_new_tokens=400))
    next(stream)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 10
    assert not [thread for thread in threading.enumerate() if thread.daemon and "generate" in thread.name]


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_weights_answer_on_the_cpu(checkpoint, quantization):
    stream = ModelStream(*load_chat_model(str(checkpoint), quantization))
    session = ChatSession(
        stream, GenerationSettings(max_new_tokens=3, greedy=True), stream.end_symbol, image=EXAMPLE
    )
    "".join(session.ask("hi"))
    assert len(session.turns) == 1
    with pytest.raises(ValueError, match="8bit"):
        load_chat_model(str(checkpoint), "2bit")


def test_terminal_output_is_printable():
    assert printable("a\x1b[2Jb\tc\n") == "a\ufffd[2Jb\tc\n"


class Terminal:
    """A program on a pseudo-terminal, read until a pattern shows up, as a person at the keyboard would."""

    def __init__(self, *command, cwd=None):
        master, child = pty.openpty()
        self.process = subprocess.Popen(
            command, stdin=child, stdout=child, stderr=child, cwd=cwd, env={**os.environ, "TERM": "dumb"}
        )
        os.close(child)
        self.master = master
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 120) -> str:
        """Everything up to and including the first match of `pattern`, which is consumed."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.seen)) is None:
            if time.monotonic() > deadline or self.process.poll() is not None and not self._ready(0):
                raise AssertionError(f"{pattern!r} never showed up; the terminal shows:\n{self.seen}")
            if self._ready(0.2):
                self.seen += os.read(self.master, 65536).decode(errors="replace").replace("\r\n", "\n")
        before, self.seen = self.seen[: found.end()], self.seen[found.end() :]
        return before

    def _ready(self, timeout):
        try:
            return bool(select.select([self.master], [], [], timeout)[0])
        except (OSError, ValueError):
            return False

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            os.close(self.master)


def test_tinygptv_chat_in_a_terminal(checkpoint, tmp_path):
    terminal = Terminal(
        str(TINYGPTV),
        "chat",
        str(checkpoint),
        "--image",
        str(EXAMPLE),
        "--max-new-tokens",
        "8",
        "--top-p",
        "0.8",
    )
    assert "about a 400x300 image" in terminal.expect("you> ")
    terminal.send("What shapes are there?")
    first = terminal.expect("you> ")
    assert re.search(r"tinygpt-v> .+\n", first)
    terminal.send("Which one is red?")
    assert re.search(r"tinygpt-v> .+\n", terminal.expect("you> "))
    terminal.send(f"/image {tmp_path / 'missing.png'}")
    assert "error: Image file not found" in terminal.expect("you> ")
    terminal.send(f"/image {EXAMPLE}")
    assert "new conversation" in terminal.expect("you> ")
    terminal.send("/reset")
    assert "(new conversation)" in terminal.expect("you> ")
    terminal.send("/quit")
    assert terminal.close() == 0


# The terminal chat over a stream function that replays known answers, so a grounded answer is certain.
SCRIPTED_CHAT = """
import sys, time
from tinygptv_hf.chat import ChatSession
from tinygptv_hf.chat.terminal import TerminalChat

replies = [
    ["Three", " shapes", " on cream", ".###", "Human: more"],
    ["<p>red square</p> {<10>", "<20><40><70>}", " and <p>blue circle</p> ", "{<55><30><85><70>}", "#", "##"],
]

def replay(messages, images, settings):
    assert len(messages) == 1 + 2 * (2 - len(replies)) and len(images) == 1
    for piece in replies.pop(0):
        time.sleep(0.05)
        yield piece

TerminalChat(ChatSession(replay, image=sys.argv[1]), save_dir=sys.argv[2]).run()
"""


def test_grounded_answer_in_the_terminal_is_saved_with_its_boxes(tmp_path):
    terminal = Terminal(sys.executable, "-c", SCRIPTED_CHAT, str(EXAMPLE), str(tmp_path / "boxes"))
    terminal.expect("you> ")
    terminal.send("What is this?")
    assert "tinygpt-v> Three shapes on cream.\n" in terminal.expect("you> ")
    terminal.send("[grounding] describe it")
    answer = terminal.expect("you> ")
    assert "<p>red square</p> {<10><20><40><70>} and <p>blue circle</p> {<55><30><85><70>}\n" in answer
    assert "box 1: red square at (40, 60, 160, 210) px" in answer
    assert "box 2: blue circle at (220, 90, 340, 210) px" in answer
    path = Path(re.search(r"annotated image: (\S+\.png)", answer).group(1))
    terminal.send("/quit")
    assert terminal.close() == 0

    assert path.parent == tmp_path / "boxes"
    drawn, original = Image.open(path).convert("RGB"), Image.open(EXAMPLE).convert("RGB")
    assert drawn.size == original.size
    for (x1, y1, x2, y2), colour in [((40, 60, 160, 210), PALETTE[0]), ((220, 90, 340, 210), PALETTE[1])]:
        middle_x, middle_y = (x1 + x2) // 2, (y1 + y2) // 2
        for point in [(x1, middle_y), (x2 - 1, middle_y), (middle_x, y2 - 1)]:
            assert drawn.getpixel(point) == colour, point
        assert drawn.getpixel((middle_x, middle_y)) == original.getpixel((middle_x, middle_y))
    assert drawn.getpixel((5, 295)) == original.getpixel((5, 295))
