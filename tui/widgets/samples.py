"""The sampling pane: a prompt with max tokens, temperature and top-k, and the samples so far.

Enter in any of the inputs posts `SampleRequested`; the screen sends it to the run and the
answer comes back through `show_sample` (from the reply, or from the run's `sample` event,
whichever arrives first). Periodic samples from `train.sample_interval` are listed too.
"""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, Label, Static

from ..model import Sample

MAX_SHOWN = 50


class SampleView(Static):
    """One sample: where it came from, then the text (the prompt part in bold)."""

    def __init__(self, sample: Sample | None = None, pending_prompt: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample = sample
        self.pending_prompt = pending_prompt

    def on_mount(self) -> None:
        self.refresh_content()

    def resolve(self, sample: Sample) -> None:
        self.sample = sample
        self.remove_class("-pending")
        self.refresh_content()

    def fail(self, error: str) -> None:
        self.add_class("-failed")
        self.remove_class("-pending")
        self.update(Content.assemble(("sample failed: ", "bold $error"), error))

    def refresh_content(self) -> None:
        s = self.sample
        if s is None:
            self.update(Content.assemble(("sampling… ", "$text-muted italic"), (self.pending_prompt, "bold")))
            return
        origin = "periodic" if s.periodic else "prompt"
        head = (f"@iter {s.iter if s.iter is not None else '?'} · {origin}\n", "$text-accent")
        if s.prompt and s.text.startswith(s.prompt):
            body = [(s.prompt, "bold"), s.text[len(s.prompt):]]
        else:
            body = [(s.prompt, "bold"), s.text] if s.prompt else [s.text]
        self.update(Content.assemble(head, *body))


class SamplePane(Vertical):
    class SampleRequested(Message):
        def __init__(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int) -> None:
            super().__init__()
            self.prompt = prompt
            self.max_new_tokens = max_new_tokens
            self.temperature = temperature
            self.top_k = top_k

    def __init__(self, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 200, **kwargs) -> None:
        super().__init__(**kwargs)
        self._defaults = (max_new_tokens, temperature, top_k)
        self._pending: dict[str, SampleView] = {}

    def compose(self) -> ComposeResult:
        n, t, k = self._defaults
        yield Input(placeholder="prompt, then Enter (s)", id="prompt", compact=True)
        with Horizontal(id="sample-params"):
            yield Label("tokens", classes="param-label")
            yield Input(str(n), id="max-tokens", type="integer", compact=True, classes="param")
            yield Label("temp", classes="param-label")
            yield Input(str(t), id="temperature", type="number", compact=True, classes="param")
            yield Label("top-k", classes="param-label")
            yield Input(str(k), id="top-k", type="integer", compact=True, classes="param")
        yield VerticalScroll(id="sample-list", can_focus=True)

    def on_mount(self) -> None:
        self.border_title = "samples"

    @property
    def prompt_input(self) -> Input:
        return self.query_one("#prompt", Input)

    def params(self) -> tuple[int, float, int] | str:
        """The three settings, or one sentence saying which is wrong."""
        try:
            n = int(self.query_one("#max-tokens", Input).value)
            t = float(self.query_one("#temperature", Input).value)
            k = int(self.query_one("#top-k", Input).value)
        except ValueError:
            return "tokens and top-k must be whole numbers, temp a number"
        if n < 1:
            return f"tokens {n}: needs at least 1"
        if not (t > 0 and math.isfinite(t)):
            return f"temp {t}: must be greater than 0"
        if k < 0:
            return f"top-k {k}: must not be negative (0 means no top-k)"
        return n, t, k

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        params = self.params()
        if isinstance(params, str):
            self.notify(params, severity="error")
            return
        self.post_message(self.SampleRequested(self.prompt_input.value, *params))

    # ---------------------------------------------------------------- results

    @property
    def views(self) -> list[SampleView]:
        return list(self.query(SampleView))

    def add_pending(self, request_id: str, prompt: str) -> None:
        view = SampleView(pending_prompt=prompt, classes="-pending")
        self._pending[request_id] = view
        self._append(view)
        self._reveal(view)

    def fail_pending(self, request_id: str, error: str) -> None:
        view = self._pending.pop(request_id, None)
        if view is not None:
            view.fail(error)
            self._reveal(view)

    def show_samples(self, samples: list[Sample]) -> None:
        new, newest = [], None
        for s in samples:
            view = self._pending.pop(s.request_id, None) if s.request_id else None
            if view is not None:
                view.resolve(s)
            else:
                view = SampleView(s)
                new.append(view)
            newest = view
        if new:
            self._append(*new[-MAX_SHOWN:])
        if newest is not None:
            self._reveal(newest)

    def _reveal(self, view: SampleView) -> None:
        """Scroll so the sample's first line is at the top: a long sample is read from its start."""
        lst = self.query_one("#sample-list", VerticalScroll)
        self.call_after_refresh(lst.scroll_to_widget, view, top=True, animate=False)

    def _append(self, *views: SampleView) -> None:
        lst = self.query_one("#sample-list", VerticalScroll)
        excess = len(lst.children) + len(views) - MAX_SHOWN
        pending = set(self._pending.values())
        for old in list(lst.children)[:max(excess, 0)]:
            if old not in pending:
                old.remove()
        lst.mount_all(views)
