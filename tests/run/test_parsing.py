"""Reading the root model's text: code blocks and answer tags."""

from __future__ import annotations

import pytest

from rlm_service.run.parsing import FinalTag, code_blocks, final_tag


def test_code_blocks_in_order_and_empty_ones_skipped() -> None:
    text = "a\n```repl\nx = 1\n```\n```python\ny = 2\n```\n```py\n \n```\n```bash\nls\n```"
    assert code_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.parametrize(("text", "tag"), [
    ("FINAL(42)", FinalTag("42", False)),
    ('So:\nFINAL("quoted (parens)")', FinalTag("quoted (parens)", False)),
    ("FINAL(line one\nline two)", FinalTag("line one\nline two", False)),
    ("FINAL_VAR(result)", FinalTag("result", True)),
    ("FINAL_VAR('result')", FinalTag("result", True)),
    ("FINAL_VAR(a)\nFINAL(b)", FinalTag("a", True)),
    # FINAL runs to the last ")" of the text, whatever follows it.
    ("FINAL(b)\nFINAL_VAR(a)", FinalTag("b)\nFINAL_VAR(a", False)),
    ("the FINAL(x) is mid-line", None),
    ("FINAL(no close", None),
    ("nothing here", None),
])
def test_final_tags(text: str, tag: FinalTag | None) -> None:
    assert final_tag(text) == tag
