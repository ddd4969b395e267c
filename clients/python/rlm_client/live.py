"""Drawing a ViewState with rich. Only reads the state; view.py builds it."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from rlm_client.view import RunView, ViewState

CODE_LINES = 14
OUTPUT_LINES = 8
RLM_CHILDREN_SHOWN = 6


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _header(state: ViewState) -> Text:
    text = Text("rlm ", style="bold")
    text.append(f"{state.root_model or '…'}")
    if state.sub_model:
        text.append(f" (sub {state.sub_model})", style="dim")
    if state.context_type:
        text.append(f" · context {state.context_type} {state.context_chars:,} chars", style="dim")
    if state.request_id:
        text.append(f" · request {state.request_id[:12]}", style="dim")
    return text


def _code_panel(run: RunView, finished: bool) -> Panel:
    if finished:
        title = f"iteration {run.iteration} · finished"
    elif run.running_block:
        title = f"iteration {run.iteration} · running block {run.running_block}/{len(run.blocks)}"
    elif run.iteration:
        title = f"iteration {run.iteration} · waiting for the model"
    else:
        title = "starting"
    code = _tail(run.code, CODE_LINES) or " "
    return Panel(Syntax(code, "python", theme="ansi_dark", word_wrap=True), title=title,
                 title_align="left")


def _output_panel(run: RunView) -> Panel:
    body = Text(_tail(run.output, OUTPUT_LINES) or "(no output yet)",
                style="red" if run.output_error else "")
    return Panel(body, title="output (tail)", title_align="left")


def _run_label(state: ViewState, run: RunView) -> str:
    if not run.call_id:
        return f"root · iteration {run.iteration} · {run.model}"
    call = state.calls.get(run.call_id)
    status = ("failed" if call.error else f"done {call.latency:.2f}s") if call and call.done \
        else f"iteration {run.iteration}"
    preview = call.prompt_preview[:40].replace("\n", " ") if call else ""
    return f"rlm_query {preview!r} · {status}"


def _grow(state: ViewState, node: Tree, run: RunView) -> None:
    calls = [state.calls[c] for c in run.calls if c in state.calls]
    plain = [c for c in calls if not c.recursive or c.call_id not in state.runs]
    if plain:
        done = [c for c in plain if c.done]
        errors = sum(c.error for c in done)
        line = f"llm_query x{len(plain)}: {len(plain) - len(done)} in flight, {len(done)} done"
        if errors:
            line += f" ({errors} failed)"
        if done:
            avg = sum(c.latency for c in done) / len(done)
            line += f" · avg {avg:.2f}s · max {max(c.latency for c in done):.2f}s"
        node.add(Text(line, style="red" if errors else ""))
    children = [state.runs[c.call_id] for c in calls if c.recursive and c.call_id in state.runs]
    for child in children[:RLM_CHILDREN_SHOWN]:
        _grow(state, node.add(_run_label(state, child)), child)
    if len(children) > RLM_CHILDREN_SHOWN:
        node.add(Text(f"… {len(children) - RLM_CHILDREN_SHOWN} more rlm_query runs",
                      style="dim"))


def _depth_table(state: ViewState) -> Table:
    table = Table("depth", "in flight", "done", "failed", "avg latency", "max latency",
                  box=None, pad_edge=False)
    for depth in sorted(state.depths):
        d = state.depths[depth]
        table.add_row(str(depth), str(d.in_flight), str(d.done), str(d.errors),
                      f"{d.latency_avg:.2f}s", f"{d.latency_max:.2f}s")
    return table


def _usage_line(state: ViewState) -> Text:
    u = state.usage
    calls = f"{u.calls} model call{'s' * (u.calls != 1)}"
    return Text(f"tokens {u.tokens:,} (prompt {u.prompt_tokens:,} · output {u.output_tokens:,}"
                f" · thinking {u.thinking_tokens:,}) · ${u.cost_usd:.4f} · {calls}"
                f" · {state.elapsed:.1f}s elapsed", style="cyan")


def render(state: ViewState) -> RenderableType:
    """The live view: header, the code running, its output, sub-calls, usage."""
    root = state.root
    parts: list[RenderableType] = [_header(state), _code_panel(root, state.finished), _output_panel(root)]
    if state.calls:
        tree = Tree(_run_label(state, root), guide_style="dim")
        _grow(state, tree, root)
        parts += [Text("sub-calls", style="bold"), tree, _depth_table(state)]
    parts.append(_usage_line(state))
    parts += [Text(n, style="yellow") for n in state.notices]
    return Group(*parts)


def render_end(state: ViewState) -> RenderableType:
    """Printed below the last frame: the answer (or the error) and the summary."""
    if state.answer is not None:
        style = "green" if state.exit_code == 0 else "yellow"
        body: RenderableType = Panel(Text(state.answer), title="answer", title_align="left",
                                     border_style=style)
    else:
        style = "red"
        body = Panel(Text(state.error_message or "no answer"),
                     title=f"error {state.error_code}", title_align="left", border_style=style)
    return Group(body, Text(state.summary, style=f"bold {style}"))
