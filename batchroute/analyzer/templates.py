"""Job templates: lines a batch of prompts share (few-shot examples, answer-format boilerplate).

Benchmark-style and pipeline prompts are often a fixed template around a varying part::

    <five worked examples, identical in every prompt>
    <the actual question>
    Print only a single choice from "A" or "B" or "C" or "D" without explanation.
    Answer:

Embedded whole (or cut to head + tail words), every prompt of such a job gets nearly the same
vector: on RouterBench's ARC file the nearest outcome neighbour of every test prompt has cosine
1.0, so predicted quality is identical for all of them and per-prompt routing degenerates to one
choice per job (quality AUC 0.50). Neighbours found on the prompt *without* its template lines
see what differs between prompts (ARC: AUC 0.58, AIQ above the single-model hull).

So the analyzer searches outcome neighbours with a second, "content" embedding of each prompt
from which template lines were removed, and keeps the whole-prompt embedding for labels (the
template's instruction is what says the task). A line is template when it occurs (stripped of
surrounding blanks) in at least ``min_share`` of a batch's prompts and in at least
``min_count`` of them: a source file when the index is built, an ``analyze`` call at run time,
plus every line learnt from the index's files (so a single realtime prompt of a known template
is stripped the same way). ``batchroute eval routing`` applies the same rule, learnt on the
train rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

# A line in at least this share of a batch's prompts (and MIN_COUNT of them) is template.
MIN_SHARE = 0.05
MIN_COUNT = 3


def template_lines(prompts: Sequence[str], min_share: float = MIN_SHARE,
                   min_count: int = MIN_COUNT) -> frozenset[str]:
    """Lines (stripped) that occur in at least ``min_share`` of ``prompts`` and ``min_count`` of them.

    A line counts once per prompt. Fewer than ``min_count`` prompts never have template lines.
    """
    if len(prompts) < min_count:
        return frozenset()
    df: Counter[str] = Counter()
    for p in prompts:
        df.update({ln.strip() for ln in p.split("\n") if ln.strip()})
    threshold = max(min_count, min_share * len(prompts))
    return frozenset(ln for ln, c in df.items() if c >= threshold)


def grouped_template_lines(groups: Iterable[Sequence[str]], min_share: float = MIN_SHARE,
                           min_count: int = MIN_COUNT) -> frozenset[str]:
    """The union of :func:`template_lines` over each group (e.g. each source file's prompts)."""
    out: set[str] = set()
    for prompts in groups:
        out |= template_lines(prompts, min_share, min_count)
    return frozenset(out)


def strip_template(prompt: str, lines: frozenset[str]) -> str:
    """``prompt`` without its template ``lines`` (and blank lines), or ``prompt`` itself unchanged
    when it has none of them or nothing else would remain."""
    if not lines:
        return prompt
    parts = prompt.split("\n")
    kept = [ln for ln in parts if ln.strip() and ln.strip() not in lines]
    if not kept or len(kept) == sum(1 for ln in parts if ln.strip()):
        return prompt
    return "\n".join(kept)
