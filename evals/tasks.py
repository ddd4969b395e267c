"""An eval task: a prompt, a context, and the exact gold answer with how to score it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# contains: the gold string appears in the answer (RULER's string match);
# numeric: 0.75 ** |error| (OOLONG); exact: equal after normalisation; pairs: F1 over pairs.
Metric = Literal["contains", "numeric", "exact", "pairs"]

CHARS_PER_TOKEN = 4  # the service's own estimate (rlm_service.models.catalog.estimate_tokens)


@dataclass(frozen=True)
class Task:
    task_id: str
    family: str  # s-niah | oolong | oolong-pairs
    prompt: str
    context: str
    gold: str
    metric: Metric
    # What the generator knows that the context does not say (for checks and reports).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return len(self.context) // CHARS_PER_TOKEN
