"""What the root model is told. Our own wording, written for this service."""

from __future__ import annotations

from typing import Any

from rlm_service.uploads.file import ContextFile

SYSTEM_PROMPT = """\
You answer a question about data that is too large to read at once. The data is \
NOT in this conversation: it is stored in the variable `context` inside a \
persistent Python REPL that you control by writing code. You only ever see what \
your code prints, and long output is cut, so print summaries and small slices, \
never the whole context.

Run code by writing one or more fenced blocks that start with ```repl. Blocks run \
in order, in one shared namespace: variables, imports and functions persist \
across blocks and turns. After each turn you get each block's stdout/stderr and \
the list of your variables.

Functions available in the REPL:
- llm_query(prompt, model=None) -> str: ask a language model. It can read far \
more text than fits in the output you see (hundreds of thousands of \
characters), so hand it whole chunks of the context together with a precise \
instruction.
- llm_query_batched(prompts, model=None) -> list[str]: many independent \
llm_query calls run concurrently; results keep their order. Prefer it to a \
loop of llm_query. An item that failed holds a string starting with "Error:".
- rlm_query(prompt, context=None, model=None) -> str and \
rlm_query_batched(prompts, contexts=None, model=None) -> list[str]: like \
llm_query, but the callee is another agent with its own REPL holding `context` \
(when recursion is allowed; otherwise they act as llm_query).
- SHOW_VARS(): list your variables.
- FINAL(answer) and FINAL_VAR(variable_name): give the final answer and end \
the run. Any code after them in the same turn is not run.

Work in steps: look at the shape of `context` first (type, length, a few \
samples), decide how to split it, use sub-calls over the pieces, combine their \
results in Python, check the result, then answer. Keep sub-call counts \
reasonable: a few dozen well-sized chunks beat thousands of tiny calls.

Give the final answer only when you are sure, in one of these ways:
1. in code: FINAL("the answer") or FINAL_VAR("name_of_variable");
2. in code: answer["content"] = ...; answer["ready"] = True;
3. in a turn with no code block, a line starting with FINAL(the answer) or \
FINAL_VAR(name_of_variable).
A plan or a promise to do something is not an answer: do the work first.

The run may be stopped by a time, call, token or cost limit. Keep your best \
answer so far in answer["content"] (without setting answer["ready"]) as you \
go: if a limit stops the run, that text is what the user receives.\
"""



def system_prompt(tools: str) -> str:
    """The system prompt, with the run's operator tools (if any) after the built-ins."""
    return f"{SYSTEM_PROMPT}\n\n{tools}" if tools else SYSTEM_PROMPT


PREVIEW_CHARS = 500
LENGTHS_SHOWN = 20


def describe_context(context: Any) -> tuple[str, int, str]:
    """(type name, total characters, a description for the model)."""
    if isinstance(context, ContextFile):
        # An uploaded text, described from what the upload counted: never read here.
        kind, total = "str", context.chars
        lines = [f"`context` is a str of {total:,} characters."]
        preview = context.preview[:PREVIEW_CHARS]
    elif isinstance(context, str):
        kind, total = "str", len(context)
        lines = [f"`context` is a str of {total:,} characters."]
        preview = context[:PREVIEW_CHARS]
    elif isinstance(context, list):
        kind = "list"
        lengths = [len(x) if isinstance(x, str) else len(repr(x)) for x in context]
        total = sum(lengths)
        lines = [f"`context` is a list of {len(context):,} items, {total:,} characters in all."]
        if lengths:
            if len(lengths) <= LENGTHS_SHOWN:
                lines.append(f"Item lengths: {lengths}.")
            else:
                head = ", ".join(str(n) for n in lengths[:LENGTHS_SHOWN])
                lines.append(
                    f"Item lengths: min {min(lengths):,}, max {max(lengths):,}, "
                    f"mean {total / len(lengths):,.0f}; first {LENGTHS_SHOWN}: {head}, ..."
                )
        preview = repr(context[:3])[:PREVIEW_CHARS]
    elif isinstance(context, dict):
        kind = "dict"
        text = repr(context)  # once: a context can be hundreds of MB
        total = len(text)
        keys = list(context)
        shown = ", ".join(repr(k) for k in keys[:LENGTHS_SHOWN])
        more = ", ..." if len(keys) > LENGTHS_SHOWN else ""
        lines = [
            f"`context` is a dict with {len(keys):,} keys ({total:,} characters as text).",
            f"Keys: {shown}{more}.",
        ]
        preview = text[:PREVIEW_CHARS]
    else:
        kind = type(context).__name__
        text = repr(context)
        total = len(text)
        lines = [f"`context` is a {kind} ({total:,} characters as text)."]
        preview = text[:PREVIEW_CHARS]
    cut = " (cut)" if total > PREVIEW_CHARS else ""
    lines.append(f"Preview{cut}:\n{preview}")
    return kind, total, "\n".join(lines)


def first_message(prompt: str, context_description: str) -> str:
    return (
        f"{context_description}\n\n"
        f"Question:\n{prompt}\n\n"
        "You have not looked at `context` yet. Start by exploring it in a ```repl block."
    )


def feedback(blocks: list[str], variables: list[str], note: str = "") -> str:
    parts = [*blocks]
    shown = ", ".join(variables[:50]) + (", ..." if len(variables) > 50 else "")
    parts.append(f"REPL variables: {shown or '(none)'}")
    if note:
        parts.append(note)
    parts.append("Continue. Answer with FINAL(...) or FINAL_VAR(...) only when you are done.")
    return "\n\n".join(parts)


def block_feedback(index: int, code_lines: int, stdout: str, stderr: str) -> str:
    out = stdout if stdout.strip() else "(no output)"
    text = f"Block {index} ({code_lines} lines) output:\n{out}"
    if stderr.strip():
        text += f"\nstderr:\n{stderr}"
    return text


NO_CODE = (
    "Your reply had no ```repl block and no final answer. Write code in a ```repl "
    "block to work on `context`, or give the answer with FINAL(...)."
)

FORCE_ANSWER = (
    "You have used all your turns. Give your best final answer now, in a line "
    "starting with FINAL(...), without writing more code."
)

TRIMMED = "[This REPL output was removed to keep the conversation within the model's input limit.]"
