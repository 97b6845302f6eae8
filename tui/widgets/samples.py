"""The sampling pane: a prompt with max tokens, temperature and top-k, and the samples so far.

Enter in any of the inputs posts `SampleRequested`; the screen sends it to the run and adds a
pending view, which the run's `sample` event with the same request_id resolves (or its `error`
event, or a refusal, fails). Periodic samples from `train.sample_interval` are listed too.
The settings' defaults and rules are the engine's (`engine.sampling`), checked as you type.
"""

from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, Label, Static

from gpt2_cockpit.engine import sampling
from gpt2_cockpit.engine.errors import UserError

from ..model import Sample
from ..validation import Checked, failures

MAX_SHOWN = 50


class SampleView(Static):
    """One sample: where it came from, then the text (the prompt part in bold).

    While pending it says which key cancels it: k, or Esc then k while a text box has the keys."""

    def __init__(self, sample: Sample | None = None, pending_prompt: str = "", source: str = "",
                 typing: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample = sample
        self.pending_prompt = pending_prompt
        self.source = source  # where a pending sample comes from, e.g. "from the checkpoint @150"
        self.typing = typing  # a text box of the pane has the keys

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
            what = f"sampling{' ' + self.source if self.source else ''}…"
            keys = "Esc, then k cancels" if self.typing else "k cancels"
            self.update(Content.assemble((f"{what} ({keys}) ", "$text-muted italic"), (self.pending_prompt, "bold")))
            return
        origin = "periodic" if s.periodic else "checkpoint" if s.from_checkpoint else "prompt"
        origin += " · cancelled" if s.cancelled else ""
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

    # the three settings: input id, label, how the text reads, the engine's default
    PARAMS = (("max-tokens", "tokens", int, sampling.MAX_NEW_TOKENS),
              ("temperature", "temp", float, sampling.TEMPERATURE),
              ("top-k", "top-k", int, sampling.TOP_K))

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._pending: dict[str, SampleView] = {}

    def compose(self) -> ComposeResult:
        yield Input(placeholder="prompt, then Enter (s)", id="prompt", compact=True)
        with Horizontal(id="sample-params"):
            for n, (input_id, label, parse, default) in enumerate(self.PARAMS):
                yield Label(label, classes="param-label")
                yield Input(str(default), id=input_id, type="integer" if parse is int else "number",
                            compact=True, classes="param", validators=[Checked(self._checker(n))])
        yield VerticalScroll(id="sample-list", can_focus=True)

    def _checker(self, n: int) -> Callable[[str], None]:
        """The engine's check of setting `n`, the other two at their defaults."""
        _, label, parse, _ = self.PARAMS[n]

        def check(text: str) -> None:
            values = [default for *_, default in self.PARAMS]
            try:
                values[n] = parse(text)
            except ValueError:
                raise UserError(f"{label} {text!r}: needs {'a whole number' if parse is int else 'a number'}") from None
            sampling.check(*values)
        return check

    def on_mount(self) -> None:
        self.border_title = "samples"

    @property
    def prompt_input(self) -> Input:
        return self.query_one("#prompt", Input)

    def params(self) -> tuple[int, float, int] | str:
        """The three settings, or one sentence saying which is wrong."""
        values = []
        for input_id, _, parse, _ in self.PARAMS:
            inp = self.query_one(f"#{input_id}", Input)
            error = failures(inp.validate(inp.value))
            if error:
                return error
            values.append(parse(inp.value))
        return tuple(values)

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

    def _typing(self) -> bool:
        focused = self.screen.focused
        return isinstance(focused, Input) and self in focused.ancestors

    def on_descendant_focus(self) -> None:
        self._say_keys()

    def on_descendant_blur(self) -> None:
        self._say_keys()

    def _say_keys(self) -> None:
        """Pending views name the key that cancels them from where the keys now go."""
        typing = self._typing()
        for view in self._pending.values():
            if view.typing != typing:
                view.typing = typing
                view.refresh_content()

    def add_pending(self, request_id: str, prompt: str, source: str = "") -> None:
        view = SampleView(pending_prompt=prompt, source=source, typing=self._typing(), classes="-pending")
        self._pending[request_id] = view
        self._append(view)
        self._reveal(view)

    def pending_ids(self) -> list[str]:
        return list(self._pending)

    def fail_pending(self, request_id: str | None, error: str) -> None:
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
