"""``RLM_BACKEND=scripted``: a small offline model made of documented rules.

No key, no network, no weights. It exists so a new user can watch the whole
service work (``make demo``) and so the eval runner can exercise its plumbing
offline (``make eval``). Its answers measure the service, never model quality,
and everything it says is marked "offline scripted model".

As a ROOT model (a call that carries the REPL system prompt) it works in three
turns, whatever the question:

1. inspect ``context`` (type, size, the first lines);
2. the work step for the question's family (``scripted_code.plan_for``):
   chunk the context, ``llm_query_batched`` over the chunks, aggregate in Python;
3. print the result and ``FINAL_VAR("result")``.

Asked for a final answer early (the iteration limit) it answers with
``FINAL_VAR(result)``.

As a SUB model it answers from the text it is given, for three prompt shapes
(the ones its root code writes):

* "Find the sentence ... that answers this question": the sentence sharing the
  most of the question's content words (identifiers such as ``vega-7`` weigh
  triple), if it has at least three quarters of them; else ``NONE``;
* "Question ... Evidence ... Answer ... with the exact value": the value after
  the last "is:" / "is" of the best evidence sentence;
* "Classify each numbered question": TREC-coarse labels by wh-word rules
  (who → human being, where → location, how many / when → numeric value,
  stand for → abbreviation, why / definition → description, else entity).

Its one model is ``offline-scripted``; other names fail with NOT_FOUND. Usage
is counted as the service estimates tokens (4 characters each); the price is 0. ``SCRIPTED_DELAY_SECONDS`` adds a fixed latency per call, so a live
view has something to show.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence

import grpc

from rlm_service.config import Settings
from rlm_service.models._base import (
    AttemptHook,
    DeltaHook,
    GenerateOptions,
    Message,
    ModelError,
    ModelReply,
    RetryHook,
    TokenUsage,
)
from rlm_service.models.catalog import estimate_tokens
from rlm_service.models.scripted_code import FINISH, INSPECT, plan_for

log = logging.getLogger(__name__)

MODEL_NAME = "offline-scripted"
BANNER = "(offline scripted model)"

_QUESTION = re.compile(r"Question:\n(.*?)\n\nYou have not looked", re.S)
_WORD = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n")
_STOP_WORDS = (
    "a an the of for to in on at by is are was were be been what which who whom whose when "
    "where why how does did do this that these those it its and or with from as into about "
    "mentioned provided text context document given above below please tell me find")
_STOP = frozenset(_STOP_WORDS.split())


class ScriptedBackend:
    """The offline scripted model behind the ``ModelBackend`` interface."""

    name = "scripted"

    def __init__(self, settings: Settings) -> None:
        self._delay = settings.scripted_delay_seconds
        log.info("offline scripted model: answers come from the rules in "
                 "rlm_service/models/scripted.py, not from a language model")

    async def generate(
        self,
        model: str,
        messages: Sequence[Message],
        options: GenerateOptions,
        *,
        deadline: float | None = None,
        on_delta: DeltaHook | None = None,
        on_retry: RetryHook | None = None,
        on_attempt: AttemptHook | None = None,
    ) -> ModelReply:
        if model != MODEL_NAME:
            # Billing a scripted reply at some real model's price would be a lie.
            raise ModelError(f"model {model!r} is not served here: the offline scripted backend "
                             f"has one model, {MODEL_NAME!r}", code=grpc.StatusCode.NOT_FOUND,
                             kind="not_found")
        if on_attempt is not None:
            on_attempt()
        if self._delay:
            left = None if deadline is None else deadline - time.monotonic()
            await asyncio.sleep(self._delay if left is None else max(0.0, min(self._delay, left)))
        is_root = bool(options.system_prompt and "```repl" in options.system_prompt)
        text = root_reply(messages) if is_root else sub_reply(messages[-1].text)
        if on_delta is not None:
            for piece in text.splitlines(keepends=True):
                on_delta(piece)
        prompt = sum(estimate_tokens(m.text) for m in messages)
        prompt += estimate_tokens(options.system_prompt or "")
        return ModelReply(text, TokenUsage(prompt_tokens=prompt,
                                           output_tokens=estimate_tokens(text)))

    async def aclose(self) -> None:
        return None


def _block(code: str) -> str:
    return f"```repl\n{code}```"


def root_reply(messages: Sequence[Message]) -> str:
    """The root turn for this conversation (see the module docstring)."""
    first = messages[0].text
    m = _QUESTION.search(first)
    question = (m[1] if m else first).strip()
    plan = plan_for(question)
    turn = sum(1 for msg in messages if msg.role == "model")
    last = messages[-1].text
    if "final answer now" in last or turn >= 3:
        return f"{BANNER} Out of turns.\nFINAL_VAR(result)"
    if turn == 0:
        return (f"{BANNER} This looks like a {plan.family} task. First, the shape of "
                f"`context`.\n{_block(INSPECT)}")
    if turn == 1:
        return (f"{BANNER} Now the work: split the context, ask a sub-model about each "
                f"piece in one batch, and combine the replies in Python.\n{_block(plan.work)}")
    if "Traceback" in last and "result" not in last:
        return f"{BANNER} The work step failed, so there is no answer.\nFINAL(no answer)"
    return f"{BANNER} The result is ready; checking it and answering.\n{_block(FINISH)}"


def sub_reply(prompt: str) -> str:
    """A sub-call's answer, read off the text in the prompt."""
    if prompt.startswith("Find the sentence"):
        head, _, body = prompt.partition("\n\nText:\n")
        question = head.split("this question:", 1)[-1].split("\n", 1)[0]
        best = best_sentence(question, _SENTENCE.split(body))
        return best if best is not None else "NONE"
    if prompt.startswith("Question:") and "\nEvidence:\n" in prompt:
        head, _, rest = prompt.partition("\nEvidence:\n")
        evidence = rest.rsplit("\nAnswer", 1)[0].splitlines()
        best = best_sentence(head.removeprefix("Question:"), evidence, threshold=0.0)
        return extract_value(best) if best is not None else "unknown"
    if prompt.startswith("Classify each numbered question"):
        body = prompt.partition("\n\nQuestions:\n")[2]
        out = []
        for line in body.splitlines():
            number, sep, question = line.partition(": ")
            if sep and number.strip().isdigit():
                out.append(f"{number.strip()}: {classify_question(question)}")
        return "\n".join(out)
    return (f"{BANNER} This prompt is not one of the shapes I answer; see "
            "rlm_service/models/scripted.py.")


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _terms(question: str) -> dict[str, int]:
    """Content words of the question and their weights (identifiers weigh 3)."""
    terms: dict[str, int] = {}
    for word in _WORD.findall(question.lower()):
        if word in _STOP or (len(word) < 3 and not any(c.isdigit() for c in word)):
            continue
        special = any(c.isdigit() for c in word) or "-" in word
        terms[_stem(word)] = 3 if special else 1
    return terms


def best_sentence(question: str, sentences: Sequence[str],
                  threshold: float = 0.75) -> str | None:
    """The sentence with most of the question's terms, if it has ``threshold`` of them."""
    terms = _terms(question)
    total = sum(terms.values())
    if not total:
        return None
    best, best_score = None, 0
    for sentence in sentences:
        if not sentence.strip():
            continue
        words = {_stem(w) for w in _WORD.findall(sentence.lower())}
        score = sum(weight for term, weight in terms.items() if term in words)
        if score > best_score:
            best, best_score = sentence.strip(), score
    if best is None or best_score < threshold * total:
        return None
    return best


def extract_value(sentence: str) -> str:
    """What follows the last "is:" or "is " in the sentence, without a final period."""
    for marker in (" is: ", " is:", " is "):
        if marker in sentence:
            sentence = sentence.rsplit(marker, 1)[1]
            break
    return sentence.strip().rstrip(".").strip()


_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("abbreviation", re.compile(r"stand for|abbreviat|acronym|full form", re.I)),
    ("human being", re.compile(r"^who\b|^whom\b|^what (?:actor|actress|author|president|"
                               r"scientist|singer|person|painter|inventor)\b", re.I)),
    ("location", re.compile(r"^where\b|^what (?:country|city|state|continent|river|"
                            r"mountain|ocean|island)\b|^in what (?:country|city)\b", re.I)),
    ("numeric value", re.compile(r"^how (?:many|much|far|long|old|tall|fast|big|hot|cold)\b|"
                                 r"^when\b|^what year\b|^in what year\b|^what (?:percentage|"
                                 r"temperature|date)\b", re.I)),
    ("description and abstract concept", re.compile(
        r"^why\b|^how (?:does|do|did|is|can|are)\b|definition|^what is (?:a|an)\b|"
        r"meaning of|^describe\b", re.I)),
)


def classify_question(question: str) -> str:
    """A TREC-coarse label by wh-word rules; ``entity`` when no rule fires."""
    question = question.strip()
    for label, rule in _RULES:
        if rule.search(question):
            return label
    return "entity"
