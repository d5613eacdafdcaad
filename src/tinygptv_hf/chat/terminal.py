"""`tinygptv chat`: a read-answer loop over a `ChatSession`, printing tokens as they arrive."""

import contextlib
import tempfile
from pathlib import Path

from ..processors import ImageLoadError
from .session import ChatSession

USER_PROMPT = "you> "
MODEL_PROMPT = "tinygpt-v> "
HELP = """Type a question and press Enter. Commands:
  /image PATH   show the model another picture (starts a new conversation)
  /reset        forget the conversation, keep the picture
  /help         this text
  /quit         leave (Ctrl-D works too); Ctrl-C stops an answer"""


class TerminalChat:
    """The loop around a session; annotated images of grounded answers go to `save_dir` (a new temporary folder
    by default), numbered in order so no answer overwrites another."""

    def __init__(self, session: ChatSession, save_dir: str | Path | None = None):
        self.session = session
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.saved = 0

    @staticmethod
    def say(text: str = "", end: str = "\n") -> None:
        print(text, end=end, flush=True)

    def run(self) -> None:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        image = self.session.image
        about = (
            f"about a {image.width}x{image.height} image"
            if image is not None
            else "without an image (/image PATH)"
        )
        self.say(f"TinyGPT-V chat {about}. Type a question; /help lists the commands.")
        while True:
            try:
                line = input(USER_PROMPT).strip()
            except (EOFError, KeyboardInterrupt):
                self.say()
                return
            if line == "/quit" or line == "/exit":
                return
            if line.startswith("/"):
                self.command(line)
            elif line:
                self.answer(line)

    def command(self, line: str) -> None:
        name, _, argument = line.partition(" ")
        if name == "/image" and argument.strip():
            self.load_image(argument.strip())
        elif name == "/reset":
            self.session.reset()
            self.say("(new conversation)")
        else:
            self.say(HELP)

    def load_image(self, path: str) -> None:
        try:
            image = self.session.set_image(path)
        except ImageLoadError as error:
            self.say(f"error: {error}")
            return
        self.say(f"(image {path}, {image.width}x{image.height}; new conversation)")

    def answer(self, question: str) -> None:
        self.say(MODEL_PROMPT, end="")
        try:
            for piece in self.session.ask(question):
                self.say(printable(piece), end="")
        except KeyboardInterrupt:
            self.say(" [stopped; not kept in the conversation]")
            return
        except ValueError as error:  # the processor's "prompt longer than the context"
            self.say(f"\nerror: {error} Type /reset to start over.")
            return
        self.say()
        self.report_boxes()

    def report_boxes(self) -> None:
        annotated = self.session.annotated_image()
        if annotated is None:
            return
        for index, item in enumerate(self.session.boxes(), start=1):
            corners = ", ".join(f"{value:.0f}" for value in item.box)
            self.say(f"  box {index}: {item.phrase or '(no phrase)'} at ({corners}) px")
        if self.save_dir is None:
            self.save_dir = Path(tempfile.mkdtemp(prefix="tinygptv-chat-"))
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.saved += 1
        path = self.save_dir / f"answer-{self.saved}.png"
        annotated.save(path)
        self.say(f"  annotated image: {path}")


def printable(text: str) -> str:
    """Control characters from a half-trained model would move the cursor or garble the terminal."""
    return "".join(char if char.isprintable() or char in "\n\t" else "\ufffd" for char in text)
