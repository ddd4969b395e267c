"""The scripted trajectories every benchmark runs, the same for our service and for rlms.

A root request carries ``MARK + scenario name`` in its prompt; the fake model
(bench/fake_gemini.py) answers it with that scenario's turns, indexed by how
many model turns the request already holds. A request with a system
instruction but no mark is a child run (``rlm_query``) and gets ``CHILD``;
anything else is a plain sub-call. Only stdlib here: the fake process and the
report both import it.

Final answers use ``answer["content"]`` / ``answer["ready"]``, which both
systems understand, so no turn has to be written twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MARK = "BENCH-SCENARIO:"


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def answer(expr: str) -> str:
    return repl(f"answer['content'] = str({expr})\nanswer['ready'] = True")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    turns: tuple[str, ...]
    expected: str  # the final answer a correct run returns
    max_depth: int = 1

    def prompt(self) -> str:
        return f"{MARK}{self.name} go"

    def root_turns(self) -> int:
        return len(self.turns)

    def ideal(self, latency: float, width: int) -> float:
        """The model's critical path: root turns, plus the sub-call waves the
        trajectory needs at ``width`` calls at once."""
        return (self.root_turns() + self.sub_waves(width)) * latency

    def sub_waves(self, width: int) -> int:
        del width
        return 0


@dataclass(frozen=True)
class Batched(Scenario):
    n: int = 200

    def sub_waves(self, width: int) -> int:
        return math.ceil(self.n / width)


@dataclass(frozen=True)
class Sequential(Scenario):
    n: int = 50

    def sub_waves(self, width: int) -> int:
        return self.n


@dataclass(frozen=True)
class FanOut(Scenario):
    children: int = 4
    subs: int = 16

    def sub_waves(self, width: int) -> int:
        # Each child: one turn that batches, the batch, one turn that answers.
        # The children run side by side.
        return len(CHILD) + math.ceil(self.subs / width)


# A child run (depth 2): batch its sub-calls, then answer with how many came back.
CHILD: tuple[str, ...] = (
    repl("outs = llm_query_batched([f'sub {i} of ' + str(len(context)) for i in range(16)])\n"
         "print(len(outs))"),
    answer("len(outs)"),
)

TURNS5 = Scenario(
    "turns5", "5 root turns, no sub-calls",
    (*(repl(f"x{i} = {i}\nprint(len(context))") for i in range(4)), answer("x3")),
    expected="3",
)
BATCH200 = Batched(
    "batch200", "200-way llm_query_batched",
    (repl("out = llm_query_batched([f'item {i}' for i in range(200)])\n"
          "bad = [o for o in out if o.startswith('Error')]\nprint(len(out), len(bad))"),
     answer("f'{len(out)} {len(bad)}'")),
    expected="200 0", n=200,
)
SEQ50 = Sequential(
    "seq50", "50 sequential llm_query",
    (repl("outs = [llm_query(f'q {i}') for i in range(50)]\n"
          "bad = [o for o in outs if o.startswith('Error')]\nprint(len(outs), len(bad))"),
     answer("f'{len(outs)} {len(bad)}'")),
    expected="50 0", n=50,
)
FANOUT = FanOut(
    "fanout", "depth-2 fan-out, 4 children x 16 sub-calls",
    (repl("outs = rlm_query_batched([f'child {i}' for i in range(4)])\nprint(outs)"),
     answer("sum(int(o) for o in outs)")),
    expected="64", max_depth=2,
)
SIDE_BY_SIDE: tuple[Scenario, ...] = (TURNS5, BATCH200, SEQ50, FANOUT)

# Ours alone.
ONE = Scenario("one", "one turn that answers", (answer("len(context)"),), expected="3")
CONTEXT = Scenario(
    "context", "print the context's size, then answer",
    (repl("print(len(context))"), answer("len(context)")), expected="",
)
STREAM = Scenario(
    "stream", "3 root turns and one llm_query",
    (repl("print(len(context))"), repl("r = llm_query('one')\nprint(len(r))"),
     answer("len(context)")),
    expected="3",
)
# Root turns plus the one sub-call on the critical path.
STREAM_MODEL_CALLS = 4

PER_CALL_N = 200
PER_CALL = Scenario(
    "percall", "time N llm_query from REPL code",
    (repl("import json, time\nllm_query('warm up')\nd = []\n"
          "for i in range(N_CALLS):\n    t = time.perf_counter()\n    llm_query('p ' + str(i))\n"
          "    d.append(time.perf_counter() - t)\n"
          "answer['content'] = json.dumps(d)\nanswer['ready'] = True"),),
    expected="",
)

ALL: dict[str, Scenario] = {s.name: s for s in (*SIDE_BY_SIDE, ONE, CONTEXT, STREAM, PER_CALL)}


def root_turn(scenario: str, model_turns: int, n_calls: int = PER_CALL_N) -> str:
    turns = ALL[scenario].turns
    return turns[min(model_turns, len(turns) - 1)].replace("N_CALLS", str(n_calls))


def scenario_of(text: str) -> str | None:
    """The scenario named after ``MARK`` in a request's text, if any."""
    at = text.find(MARK)
    if at < 0:
        return None
    name = text[at + len(MARK):].split(" ", 1)[0].split("\n", 1)[0]
    return name if name in ALL else None
