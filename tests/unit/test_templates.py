"""Job templates: which lines are template, what stripping leaves, and how the analyzer uses it.

The analyzer tests use a fake embedder that, like the real one on a cut prompt, only sees the
first few words: a templated prompt embeds as its preamble unless the template is stripped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchroute.analyzer import Analyzer
from batchroute.analyzer.index import ExemplarIndex
from batchroute.analyzer.templates import grouped_template_lines, strip_template, template_lines

PREAMBLE = ("Here are solved examples.\nQ: Which is heavier, a kilo of lead or a kilo of feathers?\n"
            "A) lead\nB) feathers\nC) neither\nAnswer: C")
SUFFIX = "Print only a single letter.\nAnswer:"


def _templated(question: str) -> str:
    return f"{PREAMBLE}\n\n{question}\nA) yes\nB) no\n{SUFFIX}"


# ---- pure functions ---------------------------------------------------------------------------


def test_template_lines_need_share_and_count() -> None:
    prompts = [f"Answer with a letter.\nQuestion {i}?\nAnswer:" for i in range(20)]
    assert template_lines(prompts) == frozenset({"Answer with a letter.", "Answer:"})
    # A line counts once per prompt however often it repeats inside one.
    assert template_lines(["x\nx\nx\nx", "y", "z"]) == frozenset()
    # Three prompts are the minimum; two never make a template.
    assert template_lines(["same\na", "same\nb"]) == frozenset()
    assert template_lines(["same\na", "same\nb", "same\nc"]) == frozenset({"same"})
    # 5% of 100 prompts is 5: a line in 4 of them is not template, one in 5 is.
    many = [f"p{i}" + ("\nfour" if i < 4 else "") + ("\nfive" if i < 5 else "") for i in range(100)]
    assert template_lines(many) == frozenset({"five"})
    # Surrounding blanks do not matter; blank lines never count.
    assert template_lines(["  Answer:  \na", "Answer:\nb", "\tAnswer:\nc\n\n"]) == frozenset({"Answer:"})


def test_grouped_lines_are_learnt_per_group() -> None:
    a = [f"A says\n{i}" for i in range(10)]
    b = [f"B says\n{i}" for i in range(10)]
    # Pooled, each line is in half the prompts either way; per group it is in all of them, and a
    # group too small to have a template contributes nothing.
    assert grouped_template_lines([a, b, ["C says\n1", "C says\n2"]]) == frozenset({"A says", "B says"})


def test_strip_template_keeps_the_varying_part() -> None:
    lines = frozenset({"Answer with a letter.", "Answer:"})
    assert strip_template("Answer with a letter.\n\nWhat is 2+2?\n  Answer:", lines) == "What is 2+2?"
    # Unchanged (the very same string) when no line is template or nothing else would remain.
    text = "What is 2+2?\n\nThink first."
    assert strip_template(text, lines) is text
    assert strip_template("Answer:\n\nAnswer with a letter.", lines) == "Answer:\n\nAnswer with a letter."
    assert strip_template(text, frozenset()) is text


# ---- the analyzer and index, with a fake embedder -------------------------------------------------


class HeadEmbedder:
    """Hashed bag of the first ``head_words`` words: templated prompts collide unless stripped."""

    head_words = 12
    config_key = "head-embedder-v1"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def config(self) -> dict[str, Any]:
        return {"model": "head-embedder"}

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for w in text.lower().split()[: self.head_words]:
                out[i, int(hashlib.sha256(w.encode()).hexdigest(), 16) % 64] += 1.0
        out += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


HARD = ["Is the Riemann hypothesis proven", "Does every even number above two split into two primes",
        "Is P equal to NP", "Are there infinitely many twin primes", "Is the Collatz conjecture true",
        "Does the Navier Stokes equation always have smooth solutions"]
EASY = ["Is water wet", "Is the sky blue on a clear day", "Do cats have four legs",
        "Is two bigger than one", "Does ice float on water", "Is fire hot"]


def _files(tmp: Path) -> list[Path]:
    outcomes = tmp / "bench_outcomes.jsonl"
    rows = [{"id": f"o{i}", "prompt": _templated(q), "outcomes": {"small": {"score": s}, "big": {"score": 1.0}}}
            for i, (q, s) in enumerate([(q, 0.0) for q in HARD] + [(q, 1.0) for q in EASY])]
    outcomes.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    labels = tmp / "labels.jsonl"
    lab = [{"id": f"l{i}", "prompt": p, "domain": d} for i, (p, d) in enumerate(
        [(f"write a poem about the {w}", "creative_writing") for w in ("sea", "moon", "rain", "fox", "tree", "sun")]
        + [(f"compute {a} times {a + 3}", "math") for a in range(6)])]
    labels.write_text("".join(json.dumps(r) + "\n" for r in lab), encoding="utf-8")
    return [labels, outcomes]


def _quality(analyzer: Analyzer, prompts: list[str]) -> list[float]:
    return [a.predicted_quality("small", prior=0.5) for a in analyzer.analyze(prompts)]


def test_index_learns_templates_and_neighbours_see_the_question(tmp_path: Path) -> None:
    emb = HeadEmbedder()
    index = ExemplarIndex.build(_files(tmp_path), emb)  # type: ignore[arg-type]
    assert len(index) == 24 and len(index.outcome_rows) == 12
    # Template lines come from the outcome file only (label rows are never stripped).
    assert index.template_lines == frozenset(
        ln.strip() for ln in (PREAMBLE + "\nA) yes\nB) no\n" + SUFFIX).split("\n"))
    assert index.content is not None
    whole = index.vectors()
    label_rows = [i for i in range(len(index)) if i not in set(index.outcome_rows.tolist())]
    assert np.array_equal(index.content[label_rows], whole[label_rows])
    # Whole prompts all embed alike (the preamble fills the head); content vectors differ.
    o = index.outcome_rows
    assert float(np.min(whole[o] @ whole[o].T)) > 0.999
    assert float(np.min(index.content[o] @ index.content[o].T)) < 0.9

    analyzer = Analyzer(index, emb, k=3, outcome_k=1, outcome_strength=0.5, min_outcome_sim=0.0)  # type: ignore[arg-type]
    hard, easy = _templated("Is the Riemann hypothesis proven yet"), _templated("Is water wet today")
    # A batch, and a single realtime prompt (stripped by the lines the index learnt).
    q_hard, q_easy = _quality(analyzer, [hard, easy])
    assert q_easy - q_hard > 0.4
    # The same index without content vectors predicts both alike: the neighbours are arbitrary.
    plain = Analyzer(ExemplarIndex.from_vectors(index.meta, whole, index.features), emb, k=3,  # type: ignore[arg-type]
                     outcome_k=1, outcome_strength=0.5, min_outcome_sim=0.0)
    p_hard, p_easy = _quality(plain, [hard, easy])
    assert p_hard == pytest.approx(p_easy, abs=1e-6)
    [single] = analyzer.analyze([hard])
    assert single.template_lines_stripped == 10 and single.predicted_quality("small", 0.5) == pytest.approx(q_hard)
    # Prompts without template lines are embedded once, as before.
    emb.calls.clear()
    [untemplated] = analyzer.analyze(["write a poem about the sea"])
    assert untemplated.template_lines_stripped == 0 and len(emb.calls) == 1


def test_batch_templates_strip_a_new_jobs_own_template(tmp_path: Path) -> None:
    emb = HeadEmbedder()
    analyzer = Analyzer(ExemplarIndex.build(_files(tmp_path), emb), emb, k=3, outcome_k=1,  # type: ignore[arg-type]
                        outcome_strength=0.5, min_outcome_sim=0.0)
    new_preamble = "You are a careful assistant who reads the whole question before answering it"
    job = [f"{new_preamble}\n{q}" for q in HARD[:3] + EASY[:3]]
    got = analyzer.analyze(job)
    # The job's own first line is in all six prompts: template for this batch, though the index never saw it.
    assert [a.template_lines_stripped for a in got] == [1] * 6
    q = [a.predicted_quality("small", 0.5) for a in got]
    assert max(q[:3]) < min(q[3:])
    # Alone, the same prompt keeps its first line (no batch to learn it from), and the head
    # embedder sees only that line, so its prediction is the unstripped one.
    [alone] = analyzer.analyze([job[0]])
    assert alone.template_lines_stripped == 0
    whole = emb.encode(job)
    content, counts = analyzer.content_embeddings(job, whole, batch_templates=False)
    assert counts == [0] * 6 and np.array_equal(content, whole)


def test_content_vectors_survive_save_and_load(tmp_path: Path) -> None:
    emb = HeadEmbedder()
    index = ExemplarIndex.build(_files(tmp_path), emb)  # type: ignore[arg-type]
    index.save(tmp_path / "idx")
    loaded = ExemplarIndex.load(tmp_path / "idx")
    assert loaded.template_lines == index.template_lines
    assert loaded.content is not None and index.content is not None
    assert np.array_equal(loaded.content, index.content)
    q = emb.encode(["Is water wet today"])
    assert np.array_equal(loaded.search_outcomes(q, 3)[1], index.search_outcomes(q, 3)[1])


def test_feedback_rows_get_content_vectors_and_teach_their_template(tmp_path: Path) -> None:
    emb = HeadEmbedder()
    labels = _files(tmp_path)[0]
    analyzer = Analyzer(ExemplarIndex.build([labels], emb), emb, k=3, outcome_k=1,  # type: ignore[arg-type]
                        outcome_strength=0.5, min_outcome_sim=0.0)
    assert analyzer.index.content is None and analyzer.index.template_lines == frozenset()
    header = "Grade school quiz, answer in one word please, and be brief about it"
    rows = [{"id": f"f{i}", "prompt": f"{header}\n{q}", "outcomes": {"small": {"score": s}}}
            for i, (q, s) in enumerate([(q, 0.0) for q in HARD] + [(q, 1.0) for q in EASY])]
    analyzer.add_exemplars(rows, refit=False)
    assert analyzer.index.template_lines == frozenset({header})
    assert analyzer.index.content is not None and len(analyzer.index.content) == len(analyzer.index) == 24
    # A single later prompt of that job is stripped by the learnt line and finds its kind.
    [hard] = analyzer.analyze([f"{header}\nIs the Riemann hypothesis proven yet"])
    [easy] = analyzer.analyze([f"{header}\nIs water wet today"])
    assert hard.template_lines_stripped == easy.template_lines_stripped == 1
    assert easy.predicted_quality("small", 0.5) - hard.predicted_quality("small", 0.5) > 0.4


def test_explain_says_when_template_lines_were_left_out() -> None:
    from rich.console import Console

    from batchroute.explain import render_explanation

    def rendered(detail: dict[str, Any]) -> str:
        data = {"request_id": "j-1", "custom_id": "p1", "state": "succeeded", "model": "m", "provider": "p",
                "prompt_head": "hi", "attempts": [], "decisions": [{"seq": 0, "reason": "r", "detail": detail}]}
        console = Console(record=True, width=300)
        render_explanation(data, console)
        return console.export_text()

    assert "without its 10 template lines" in rendered({"template_lines_stripped": 10, "candidates": []})
    # Nothing stripped, or a decision stored before the field existed: no such line.
    assert "template lines" not in rendered({"template_lines_stripped": 0, "candidates": []})
    assert "template lines" not in rendered({"candidates": []})


def test_a_large_build_reports_progress_and_embeds_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    import batchroute.analyzer.index as index_module

    files = _files(tmp_path)
    caplog.set_level("INFO", logger="batchroute.notice")
    whole = ExemplarIndex.load_or_build(files, HeadEmbedder(), tmp_path / "one")  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.name == "batchroute.notice"]  # 24 rows: one call, quiet
    monkeypatch.setattr(index_module, "PROGRESS_CHUNK_ROWS", 10)
    emb = HeadEmbedder()
    chunked = ExemplarIndex.load_or_build(files, emb, tmp_path / "cache")  # type: ignore[arg-type]
    assert [len(c) for c in emb.calls][:3] == [10, 10, 4]
    assert np.array_equal(chunked.vectors(), whole.vectors())
    notices = [r.getMessage() for r in caplog.records if r.name == "batchroute.notice"]
    assert notices[0] == "building the exemplar index: 24 rows from 2 files (once per exemplar set, then cached)"
    assert [n.split(",")[0] for n in notices[1:4]] == [
        "  exemplar index: 10/24 rows embedded", "  exemplar index: 20/24 rows embedded",
        "  exemplar index: 24/24 rows embedded"]
    assert len(notices) == 5 and notices[4].startswith("exemplar index built in ")
    assert notices[-1].endswith(f"cached in {chunked.directory}")

