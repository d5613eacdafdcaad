"""One conversation about one picture, independent of where the answer tokens come from."""

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from PIL import Image

from ..grounding import GroundedBox, draw_boxes, parse_grounded_text
from ..processors import load_image, to_rgb
from .generation import GenerationSettings

# messages in the chat-template format, the images they refer to in order, sampling settings -> answer text pieces
StreamFn = Callable[[list[dict], list[Image.Image], GenerationSettings], Iterable[str]]


def until_end_symbol(pieces: Iterable[str], end_symbol: str) -> Iterator[str]:
    """Pass text through up to the first `end_symbol`, holding back any tail that may be its beginning.

    The symbol can arrive split over several pieces (``#`` then ``##``), and the original's model keeps talking
    after it, so a plain per-piece check would leak part of the symbol or the text beyond it.
    """
    if not end_symbol:
        yield from pieces
        return
    pending = ""
    for piece in pieces:
        pending += piece
        cut = pending.find(end_symbol)
        if cut >= 0:
            if cut:
                yield pending[:cut]
            return
        ready = len(pending) - start_of_symbol(pending, end_symbol)
        if ready:
            yield pending[:ready]
            pending = pending[ready:]
    if pending:
        yield pending


def start_of_symbol(text: str, symbol: str) -> int:
    """Length of the longest end of `text` that `symbol` begins with."""
    for size in range(min(len(text), len(symbol) - 1), 0, -1):
        if symbol.startswith(text[-size:]):
            return size
    return 0


class ChatSession:
    """Turns of (question, answer) about the current image, rendered as chat messages for each new question.

    A turn joins the conversation only when its answer is complete, so an interrupted or rejected question (too
    long for the context) leaves the conversation as it was.
    """

    def __init__(
        self,
        stream_fn: StreamFn,
        settings: GenerationSettings | None = None,
        end_symbol: str = "###",
        image=None,
    ):
        self.stream_fn = stream_fn
        self.settings = settings or GenerationSettings()
        self.end_symbol = end_symbol
        self.image: Image.Image | None = None
        self.turns: list[tuple[str, str]] = []
        if image is not None:
            self.set_image(image)

    def set_image(self, image: str | Path | bytes | Image.Image) -> Image.Image:
        """Load a new picture; boxes in earlier answers referred to the old one, so the conversation restarts."""
        self.image = to_rgb(load_image(image))
        self.reset()
        return self.image

    def reset(self) -> None:
        self.turns = []

    def messages(self, question: str) -> list[dict]:
        """The conversation plus `question` as chat messages; the image goes with the first question."""
        messages = []
        for index, (asked, answer) in enumerate([*self.turns, (question, None)]):
            content = [{"type": "text", "text": asked}]
            if index == 0 and self.image is not None:
                content.insert(0, {"type": "image"})
            messages.append({"role": "user", "content": content})
            if answer is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def ask(self, question: str, settings: GenerationSettings | None = None) -> Iterator[str]:
        """Stream the answer to `question`; the raw stream is closed as soon as the end symbol shows up."""
        images = [self.image] if self.image is not None else []
        stream = iter(self.stream_fn(self.messages(question), images, settings or self.settings))
        pieces = []
        try:
            for piece in until_end_symbol(stream, self.end_symbol):
                pieces.append(piece)
                yield piece
        finally:
            if hasattr(stream, "close"):
                stream.close()
        self.turns.append((question, "".join(pieces).strip()))

    @property
    def last_answer(self) -> str | None:
        return self.turns[-1][1] if self.turns else None

    def boxes(self) -> list[GroundedBox]:
        """The boxes of the last answer in pixels of the current image (none without an image)."""
        if self.image is None or not self.turns:
            return []
        return parse_grounded_text(self.last_answer, *self.image.size)

    def annotated_image(self) -> Image.Image | None:
        """The current image with the last answer's boxes drawn, or None when that answer has no box."""
        boxes = self.boxes()
        return draw_boxes(self.image, boxes) if boxes else None
