"""The REPL code the offline scripted model writes as a ROOT model.

The scripted model recognises a task family from the question's wording and
writes the same kind of program a capable model would: look at `context`, split
it, ask sub-models about each piece with ``llm_query_batched``, combine the
replies in Python, then answer with ``FINAL_VAR``. Nothing here knows an
answer: every number comes from running the code on the real context.

Families (the question shapes the generators in ``evals/`` produce):

* ``oolong``: counting / most / least / comparing labels of data rows
  (``Date: ... || User: ... || Instance: ...``);
* ``pairs``: all pairs of user ids whose rows satisfy a label/date condition;
* ``search``: anything else, e.g. a needle ("special magic number") or a fact
  in a log: find the sentence that answers the question, then extract the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LABELS = ("numeric value", "entity", "human being", "location",
          "description and abstract concept", "abbreviation")

SEARCH_CHUNK_CHARS = 200_000  # ~50k tokens: well inside any sub-model's window
ROWS_PER_CALL = 100

INSPECT = '''\
print(type(context).__name__, len(context))
text = context if isinstance(context, str) else "\\n".join(map(str, context)) \\
    if isinstance(context, list) else str(context)
lines = text.splitlines()
print(f"{len(text):,} characters in {len(lines):,} lines; the first few:")
for line in lines[:5]:
    print("|", line[:160])
'''

_TEXT = '''\
text = context if isinstance(context, str) else "\\n".join(map(str, context)) \\
    if isinstance(context, list) else str(context)
'''

SEARCH = _TEXT + '''\
question = {question!r}
SIZE = {size}
chunks, current, size = [], [], 0
for line in text.splitlines(keepends=True):
    if size + len(line) > SIZE and current:
        chunks.append("".join(current))
        current, size = [], 0
    current.append(line)
    size += len(line)
if current:
    chunks.append("".join(current))
prompts = ["Find the sentence in the text below that answers this question: " + question
           + "\\nReply with that sentence copied exactly, or NONE if the text does not "
           "contain it.\\n\\nText:\\n" + chunk for chunk in chunks]
replies = llm_query_batched(prompts)
found = [r.strip() for r in replies
         if r.strip() and not r.strip().upper().startswith("NONE") and not r.startswith("Error:")]
print(f"{{len(chunks)}} chunks of up to {{SIZE:,}} characters; {{len(found)}} had a candidate")
for sentence in found[:5]:
    print("  candidate:", sentence[:200])
if found:
    result = llm_query("Question: " + question + "\\nEvidence:\\n" + "\\n".join(found)
                       + "\\nAnswer the question with the exact value from the evidence, "
                       "and nothing else.").strip()
else:
    result = "The context does not seem to contain the answer."
answer["content"] = result
print("answer so far:", result[:200])
'''

CLASSIFY = _TEXT + '''\
import re
from collections import Counter, defaultdict
from datetime import datetime
LABELS = {labels!r}

def parse_day(value):
    try:
        return datetime.strptime(value, "%b %d, %Y")
    except ValueError:
        return None

rows = []
for line in text.splitlines():
    m = re.search(r"Date:\\s*(.+?)\\s*\\|\\|\\s*User:\\s*(\\d+)\\s*\\|\\|\\s*Instance:\\s*(.+)", line)
    if m:
        rows.append((parse_day(m.group(1)), int(m.group(2)), m.group(3).strip()))
groups = [rows[i:i + {step}] for i in range(0, len(rows), {step})]
print(f"{{len(rows):,}} data rows in {{len(groups)}} groups of up to {step}")
prompts = []
for group in groups:
    body = "\\n".join(f"{{k}}: {{q}}" for k, (_, _, q) in enumerate(group, 1))
    prompts.append("Classify each numbered question below into exactly one of these labels: "
                   + ", ".join(LABELS) + ".\\nReply with one line per question, formatted "
                   "'<number>: <label>', and nothing else.\\n\\nQuestions:\\n" + body)
replies = llm_query_batched(prompts)

def canonical(name):
    name = name.strip().strip("'\\"").lower()
    for label in LABELS:
        if name.startswith(label.split()[0]):
            return label
    return "unknown"

labels = []
for group, reply in zip(groups, replies):
    got = {{int(m.group(1)): canonical(m.group(2))
           for m in re.finditer(r"^\\s*(\\d+)\\s*[:.)-]\\s*(.+?)\\s*$", reply, re.M)}}
    labels.extend(got.get(k, "unknown") for k in range(1, len(group) + 1))
counts = Counter(labels)
print("label counts:", dict(counts.most_common()))
'''

COUNT = "result = str(counts[{label!r}])\n"
MOST = "result = max(LABELS, key=lambda label: counts[label])\n"
LEAST = "result = min(LABELS, key=lambda label: counts[label])\n"
COMPARE = '''\
a, b = counts[{a!r}], counts[{b!r}]
result = "more common than" if a > b else "less common than" if a < b else "same frequency as"
'''
PAIRS = '''\
per_user = defaultdict(list)
for (day, user, _), label in zip(rows, labels):
    per_user[user].append((day, label))
good = sorted(u for u, items in per_user.items() if any({test} for day, label in items))
pairs = [(a, b) for i, a in enumerate(good) for b in good[i + 1:]]
print(f"{{len(good)}} of {{len(per_user)}} users qualify: {{len(pairs)}} pairs")
result = "\\n".join(f"({{a}}, {{b}})" for a, b in pairs)
'''
SHOW = '''answer["content"] = result
print("answer so far:", result[:200])
'''

FINISH = '''\
print("final answer:", repr(result)[:300])
FINAL_VAR("result")
'''

_LABEL = r"'([^']+)'"
_COUNT = re.compile(r"how many .*?(?:labell?ed|classified as|label) " + _LABEL, re.I | re.S)
_MOST = re.compile(r"\bmost (?:common|frequent) label", re.I)
_LEAST = re.compile(r"\bleast (?:common|frequent) label", re.I)
_COMPARE = re.compile(r"is label " + _LABEL + r" more common, less common,? or (?:the )?same "
                      r"frequency as label " + _LABEL, re.I)
_PAIRS = re.compile(r"pairs of user ids", re.I)
_AFTER = re.compile(r"labell?ed " + _LABEL + r" dated after ([A-Z][a-z]{2} \d{1,2}, \d{4})")
_EITHER = re.compile(r"labell?ed " + _LABEL + r" or " + _LABEL)
_ONE = re.compile(r"labell?ed " + _LABEL)


@dataclass(frozen=True)
class Plan:
    family: str
    work: str  # the code of the step that does the work


def plan_for(question: str) -> Plan:
    """The family and the work-step code for ``question``."""
    classify = CLASSIFY.format(labels=LABELS, step=ROWS_PER_CALL)
    if _PAIRS.search(question):
        test = _pair_test(question)
        if test is not None:
            return Plan("pairs", classify + PAIRS.format(test=test) + SHOW)
    if (m := _COMPARE.search(question)) is not None:
        return Plan("oolong", classify + COMPARE.format(a=_label(m[1]), b=_label(m[2])) + SHOW)
    if (m := _COUNT.search(question)) is not None:
        return Plan("oolong", classify + COUNT.format(label=_label(m[1])) + SHOW)
    if _MOST.search(question):
        return Plan("oolong", classify + MOST + SHOW)
    if _LEAST.search(question):
        return Plan("oolong", classify + LEAST + SHOW)
    return Plan("search", SEARCH.format(question=question, size=SEARCH_CHUNK_CHARS))


def _label(name: str) -> str:
    name = name.strip().lower()
    return next((label for label in LABELS if label.startswith(name.split()[0])), name)


def _pair_test(question: str) -> str | None:
    """A Python test over ``day`` and ``label`` for one row, from the pair condition."""
    if (m := _AFTER.search(question)) is not None:
        return (f"label == {_label(m[1])!r} and day is not None and "
                f"day > parse_day({m[2]!r})")
    if (m := _EITHER.search(question)) is not None:
        return f"label in ({_label(m[1])!r}, {_label(m[2])!r})"
    if (m := _ONE.search(question)) is not None:
        return f"label == {_label(m[1])!r}"
    return None
