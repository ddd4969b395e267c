"""A rough cost estimate printed before an online run spends money.

Per task: the root reads the system prompt and its growing history for a few
turns; the sub-models read the whole context about once, plus their replies
(classification answers one short line per row, so about a tenth of the input).
"""

from __future__ import annotations

from evals.tasks import Task
from rlm_service.config import Settings
from rlm_service.models import TokenUsage
from rlm_service.models.catalog import ModelCatalog

ROOT_TURNS = 6
ROOT_INPUT_PER_TURN = 5_000
ROOT_OUTPUT_PER_TURN = 800


def task_usage(task: Task) -> tuple[TokenUsage, TokenUsage]:
    """(root, sub) token usage one run of ``task`` may take."""
    root = TokenUsage(prompt_tokens=ROOT_TURNS * ROOT_INPUT_PER_TURN,
                      output_tokens=ROOT_TURNS * ROOT_OUTPUT_PER_TURN)
    share = 0.1 if task.family != "s-niah" else 0.01
    sub = TokenUsage(prompt_tokens=int(task.tokens * 1.2),
                     output_tokens=int(task.tokens * share))
    return root, sub


def estimate(tasks: list[Task], root_model: str, sub_model: str,
             settings: Settings) -> tuple[float, list[str]]:
    """(dollars, models without a known price)."""
    catalog = ModelCatalog(settings)
    unknown = sorted({m for m in (root_model, sub_model) if catalog.price_for(m) is None})
    total = 0.0
    for task in tasks:
        root, sub = task_usage(task)
        total += catalog.cost_usd(root_model, root) + catalog.cost_usd(sub_model, sub)
    return total, unknown
