"""Concurrent requests sharing forward passes: a worker thread gathers waiting requests into one batched `generate`.

Each request is prepared alone (chat template, image, tokens) where it arrives; the worker left-pads the waiting
ones that sample alike into one batch, so N users cost about one generation's steps, not N. A row stops on its own
(end symbol, its `stop` strings, its token limit, its client gone) through a per-row stopping criterion that also
decodes its text and hands each new piece to the request, so streaming needs no streamer, which `generate` allows
only for a batch of one. Left padding with the attention mask leaves each row's greedy answer as it is alone.

Static batching, not continuous: a request arriving during a generation waits for it to end (docs/serve-http.md#batching).
"""

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .generation import GenerationSettings
from .session import start_of_symbol


@dataclass
class Job:
    """One request's prepared inputs and where its answer goes.

    `deliver` receives `("text", piece)` as the answer grows, then `("end", finish_reason, completion_tokens)` or
    `("error", message)`; it is called from the worker thread.
    """

    inputs: dict  # the processor's output for this request alone (batch of one)
    settings: GenerationSettings
    stops: tuple[str, ...]
    deliver: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        return self.inputs["input_ids"].shape[1]

    @property
    def sampling(self) -> tuple:
        """Requests batch together only when `generate` would sample them alike."""
        s = self.settings
        return (s.greedy, s.repetition_penalty) + (() if s.greedy else (s.temperature, s.top_p))


class _Row:
    """A job's answer inside a batch: its new tokens, the text sent so far, and whether and why it ended."""

    def __init__(self, job: Job, tokenizer, end_ids: set[int]):
        self.job = job
        self.tokenizer = tokenizer
        self.end_ids = end_ids
        self.ids: list[int] = []
        self.sent = ""
        self.finish_reason: str | None = None

    def add(self, token: int) -> None:
        if self.job.cancelled.is_set():
            self.finish_reason = "cancelled"
            return
        self.ids.append(token)
        if token in self.end_ids:
            return self._end("stop")
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cuts = [text.find(stop) for stop in self.job.stops if stop in text]
        if cuts:
            return self._end("stop", text[: min(cuts)])
        if len(self.ids) >= self.job.settings.max_new_tokens:
            return self._end("length", text)
        # hold back what may be the start of a stop string, or of a character whose bytes are still coming
        held = max((start_of_symbol(text, stop) for stop in self.job.stops), default=0)
        self._send(text[: len(text) - held].rstrip("\ufffd"))

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.job.deliver(("text", text[len(self.sent) :]))
            self.sent = text

    def _end(self, reason: str, text: str | None = None) -> None:
        if text is not None:
            self._send(text)
        self.finish_reason = reason
        self.job.deliver(("end", reason, len(self.ids)))

    def close(self) -> None:
        """The batch ended without this row ending itself (the context filled up)."""
        if self.finish_reason is None:
            text = self.tokenizer.decode(
                self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            self._end("length", text)


class _RowsCriteria(StoppingCriteria):
    """Feeds each row its new token and tells `generate` which rows are done."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if row.finish_reason is None:
                row.add(token)
        return torch.tensor([row.finish_reason is not None for row in self.rows], device=input_ids.device)


class BatchScheduler:
    """Runs the jobs `submit`ted from any thread in batches of up to `max_batch` on one worker thread.

    After taking the oldest waiting job the worker waits `gather_s` for companions, and up to `arriving_s` for the
    requests still being prepared (`arriving`), so that clients answered by the same batch, who come back together,
    share the next one too rather than wait for a whole generation.
    """

    def __init__(self, model, processor, max_batch: int = 8, gather_s: float = 0.02, arriving_s: float = 2.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        self.model = model
        self.processor = processor
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.arriving_s = arriving_s
        self._arriving = 0
        self.batch_sizes: list[int] = []  # one entry per batch run, for tests and measurements
        self._waiting: list[Job] = []
        self._condition = threading.Condition()
        tokenizer = processor.tokenizer
        self._end_ids = {tokenizer.eos_token_id} - {None}
        self._pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        threading.Thread(target=self._work, name="tinygptv-batches", daemon=True).start()

    def submit(self, job: Job) -> None:
        with self._condition:
            self._waiting.append(job)
            self._condition.notify()

    @contextmanager
    def arriving(self):
        """Around a request's preparation: the worker may wait for it to join the next batch."""
        with self._condition:
            self._arriving += 1
        try:
            yield
        finally:
            with self._condition:
                self._arriving -= 1
                self._condition.notify()

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._run(batch)
            except Exception as error:  # a failed batch answers its requests; the worker keeps serving
                for job in batch:
                    job.deliver(("error", f"Generation failed: {error}"))

    def _next_batch(self) -> list[Job]:
        with self._condition:
            self._condition.wait_for(lambda: self._waiting)
            started = time.monotonic()
            while len(self._waiting) < self.max_batch:
                waited = time.monotonic() - started
                left = (self.arriving_s if self._arriving else self.gather_s) - waited
                if left <= 0:
                    break
                self._condition.wait(left)
            first = self._waiting[0]
            batch, longest, most_new = [], 0, 0
            for job in list(self._waiting):
                fits = max(longest, job.prompt_tokens) + max(most_new, job.settings.max_new_tokens)
                if (
                    len(batch) < self.max_batch
                    and job.sampling == first.sampling
                    and fits <= self.processor.context_length
                ):
                    batch.append(job)
                    self._waiting.remove(job)
                    longest = max(longest, job.prompt_tokens)
                    most_new = max(most_new, job.settings.max_new_tokens)
            return batch

    def _collate(self, batch: list[Job]) -> dict:
        """The jobs' inputs left-padded into one batch, as the processor pads (`padding=True`)."""
        length = max(job.prompt_tokens for job in batch)
        input_ids = torch.full((len(batch), length), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for index, job in enumerate(batch):
            size = job.prompt_tokens
            input_ids[index, length - size :] = job.inputs["input_ids"][0]
            attention_mask[index, length - size :] = job.inputs["attention_mask"][0]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        pixels = [job.inputs["pixel_values"] for job in batch if "pixel_values" in job.inputs]
        if pixels:
            inputs["pixel_values"] = torch.cat(pixels)
        return {name: value.to(self.model.device) for name, value in inputs.items()}

    def _run(self, batch: list[Job]) -> None:
        self.batch_sizes.append(len(batch))
        rows = [_Row(job, self.processor.tokenizer, self._end_ids) for job in batch]
        kwargs = batch[0].settings.generate_kwargs(room=self.processor.context_length)
        kwargs["max_new_tokens"] = max(
            job.settings.max_new_tokens for job in batch
        )  # each row stops at its own
        with torch.inference_mode():
            self.model.generate(
                **self._collate(batch),
                **kwargs,
                pad_token_id=self._pad_id,
                tokenizer=self.processor.tokenizer,
                stopping_criteria=StoppingCriteriaList([_RowsCriteria(rows)]),
            )
        for row in rows:
            row.close()
