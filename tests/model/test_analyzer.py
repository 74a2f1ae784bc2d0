"""The analyzer with the real embedding model: labels on clear-cut prompts, batching, caching."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from batchroute.analyzer import (
    BUNDLED_EXEMPLARS,
    FULL_LENGTH,
    Analysis,
    Analyzer,
    Embedder,
    ExemplarIndex,
    prepare_text,
)
from batchroute.errors import AnalyzerError
from batchroute.taxonomy import COMPLEXITIES, DOMAINS, STYLES

pytestmark = pytest.mark.model

REVIEW = ("I bought this blender last month and it has been a disappointment. The motor is loud, the lid "
          "leaks every time I make a smoothie, and customer support never answered my emails.\n\n"
          "Is this review positive or negative?")
TRANSCRIPT = ("Summarize this meeting transcript in 3 bullet points:\n\nAnna: Let's start with the launch "
              "date. Engineering says the payment integration slipped a week.\nBen: Marketing can move "
              "the campaign, but the press release is already scheduled for the 14th.\nAnna: Then we "
              "ship the landing page on the 14th and the checkout on the 21st.\nCarl: I'll update the "
              "roadmap and tell support to expect questions about the delay.")
INVOICE = ("From this invoice, return vendor, date and total as JSON:\n\nINVOICE #4471\nAcme Office "
           "Supplies Ltd., 12 Harbour Road, Leeds\nDate: 3 March 2024\n2 x Printer paper A4 ... 19.98\n"
           "1 x Stapler ... 7.50\nTotal due: 27.48 GBP")

CLEAR_CUT = [
    ("Write a Python function that reverses a linked list", "code"),
    ("Solve for x: 3x + 7 = 22", "math"),
    ("Write a limerick about a cat who hates Mondays", "creative_writing"),
    ("What causes the seasons on Earth?", "factual_qa"),
    ("Give me ten names for a bakery", "brainstorming"),
    (TRANSCRIPT, "summarization"),
    (INVOICE, "extraction"),
    (REVIEW, "classification"),
    ("Five people sit in a row. Ann is not next to Bob, Carl sits in the middle, Dana is at the left "
     "end and Bob is right of Carl. Where does Ann sit?", "reasoning"),
]


def _check_valid(a: Analysis) -> None:
    assert a.domain in DOMAINS and a.complexity in COMPLEXITIES and a.style in STYLES
    for p in (a.confidence, a.complexity_confidence, a.style_confidence):
        assert 0.0 <= p <= 1.0
    assert set(a.domain_probs) == set(DOMAINS)
    assert sum(a.domain_probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert a.domain == max(a.domain_probs, key=a.domain_probs.__getitem__)
    assert a.confidence == pytest.approx(a.domain_probs[a.domain])
    assert 1 <= len(a.neighbours) <= 5
    sims = [n.similarity for n in a.neighbours]
    assert sims == sorted(sims, reverse=True)


def test_clear_cut_domains(analyzer: Analyzer) -> None:
    results = analyzer.analyze([p for p, _ in CLEAR_CUT])
    got = {want: a.domain for (_, want), a in zip(CLEAR_CUT, results, strict=True)}
    assert got == {want: want for _, want in CLEAR_CUT}


def test_clear_cut_complexity_and_style(analyzer: Analyzer) -> None:
    short, essay = analyzer.analyze([
        "What is 7 + 5? Reply with just the number.",
        "Write a detailed 2,000-word essay on the causes of the First World War, with sections on "
        "alliances, militarism, imperialism and nationalism, and a reasoned conclusion.",
    ])
    assert (short.domain, short.complexity, short.style) == ("math", "simple", "concise")
    assert (essay.complexity, essay.style) == ("complex", "verbose")


def test_labels_always_valid_and_batch_length(analyzer: Analyzer) -> None:
    prompts = ["", " ", "?", "a" * 20_000, "x" * 3, "数学の問題を解いてください", *[p for p, _ in CLEAR_CUT]]
    results = analyzer.analyze(prompts)
    assert len(results) == len(prompts)
    for a in results:
        _check_valid(a)
    assert analyzer.analyze([]) == []


def test_duplicates_get_identical_results(analyzer: Analyzer) -> None:
    a, b = analyzer.analyze([REVIEW, REVIEW])
    assert a == b


def test_embedding_cache_returns_identical_vectors(analyzer: Analyzer) -> None:
    emb = analyzer.embedder
    text = "An uncached prompt about the migration habits of arctic terns " + str(time.time())
    first = emb.encode([text])
    hits = emb.stats["hits"]
    again = emb.encode(["something else entirely", text])
    assert emb.stats["hits"] == hits + 1
    assert np.array_equal(first[0], again[1])
    assert first.dtype == np.float32 and first.shape == (1, 384)
    assert np.linalg.norm(first[0]) == pytest.approx(1.0, abs=1e-4)


def test_long_prompts_are_prepared(analyzer: Analyzer) -> None:
    prep = analyzer.embedder.prep
    long_prompt = " ".join(f"w{i}" for i in range(1000))
    prepared = prepare_text(long_prompt, prep)
    words = prepared.split()
    assert words[: prep.head_words] == [f"w{i}" for i in range(prep.head_words)]
    assert words[-prep.tail_words:] == [f"w{i}" for i in range(1000 - prep.tail_words, 1000)]
    assert prepare_text("short  prompt\n here", prep) == "short prompt here"


def _small_exemplar_file(tmp_path: Path) -> Path:
    lines = []
    for f in sorted(BUNDLED_EXEMPLARS.glob("*.jsonl")):
        lines += f.read_text().splitlines()[:4]
    lines.append("{not json")
    lines.append(json.dumps({"id": "bad-label", "prompt": "hello", "domain": "poetry"}))
    lines.append(json.dumps({"id": "o1", "prompt": "What is 12 * 12?", "domain": "math",
                             "outcomes": {"big": {"score": 1.0, "cost_usd": 0.01}, "small": {"score": 0.0}}}))
    lines.append(json.dumps({"id": "o2", "prompt": "Compute 15 * 15.", "domain": None,
                             "outcomes": {"big": {"score": 1.0}, "small": {"score": 0.0}}}))
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cached_index_reload_equals_built(analyzer: Analyzer, tmp_path: Path) -> None:
    path = _small_exemplar_file(tmp_path)
    built = ExemplarIndex.load_or_build([path], analyzer.embedder, tmp_path / "cache")
    assert len(built.problems) == 2
    assert {m.id for m in built.meta} >= {"o1", "o2"} and "bad-label" not in {m.id for m in built.meta}
    t0 = time.perf_counter()
    loaded = ExemplarIndex.load_or_build([path], analyzer.embedder, tmp_path / "cache")
    assert time.perf_counter() - t0 < 1.0
    assert loaded.key == built.key
    assert np.array_equal(loaded.vectors(), built.vectors())
    assert np.array_equal(loaded.features, built.features)
    assert [m.to_json() for m in loaded.meta] == [m.to_json() for m in built.meta]
    q = analyzer.embedder.encode(["What is 13 * 13?"])
    assert all(np.array_equal(x, y) for x, y in zip(loaded.search(q, 5), built.search(q, 5), strict=True))
    assert built.queries is not None and loaded.queries is not None
    assert np.array_equal(loaded.queries, built.queries)
    # Another input gives another key: a stale index is never reused.
    path.write_text(path.read_text() + json.dumps({"id": "new", "prompt": "Hi", "domain": "factual_qa"}) + "\n")
    assert ExemplarIndex.load_or_build([path], analyzer.embedder, tmp_path / "cache").key != built.key


def test_index_rows_are_whole_prompts_in_fp32_and_kept_as_queries_too(analyzer: Analyzer, tmp_path: Path) -> None:
    emb = analyzer.embedder
    ref = emb.for_index()
    assert (ref.prep, ref.precision, emb.precision) == (FULL_LENGTH, "ort-fp32", "ort-int8")
    assert ref.for_index() is ref and emb.for_index() is ref
    long_prompt = "Summarize this report for the board. " + "Revenue grew in every region last year. " * 40
    path = tmp_path / "ex.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": long_prompt, "domain": "summarization"},
        {"id": "b", "prompt": "What is 7 * 8?", "domain": "math"}]))
    index = ExemplarIndex.build([path], emb)
    prompts = [long_prompt, "What is 7 * 8?"]
    # Rows: the whole prompt at full precision (the fp32 graph equals the stock fp32 model).
    stock = Embedder(prep=FULL_LENGTH, precision="fp32", cache_size=0).encode(prompts)
    assert np.allclose(index.vectors(), stock, atol=1e-4)
    # As queries: cut and int8, exactly what analyze() embeds for the same text.
    assert index.queries is not None and np.array_equal(index.queries, emb.encode(prompts))
    assert float(index.queries[0] @ index.vectors()[0]) < 0.99  # the cut changes the long prompt
    # The index key names both embedders: with index_full off it is another index, as before.
    plain = Embedder(index_full=False)
    assert plain.for_index() is plain
    other = ExemplarIndex.build([path], plain)
    assert other.queries is None and other.key != index.key
    assert np.array_equal(other.vectors(), plain.encode(prompts))

    # Learnt rows (feedback) are embedded the same two ways.
    an = Analyzer(index, emb, k=1)
    an.add_exemplars([{"id": "c", "prompt": "Write a haiku about rain.", "domain": "creative_writing"}])
    assert len(index) == 3 and index.queries is not None and len(index.queries) == 3
    haiku = Embedder(prep=FULL_LENGTH, precision="fp32", cache_size=0).encode(["Write a haiku about rain."])
    assert np.allclose(index.vectors()[2], haiku[0], atol=1e-4)
    assert np.array_equal(index.queries[2], emb.encode(["Write a haiku about rain."])[0])



def test_fit_is_cached_beside_the_cached_index(analyzer: Analyzer, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = _small_exemplar_file(tmp_path)
    cache = tmp_path / "cache"
    first = Analyzer(ExemplarIndex.load_or_build([path], analyzer.embedder, cache), analyzer.embedder)
    assert not first.fit_cached and first.fit_report["domain"]["trained"] > 0
    [fit_file] = (cache / first.index.key).glob("fit-*.npz")
    second = Analyzer(ExemplarIndex.load_or_build([path], analyzer.embedder, cache), analyzer.embedder)
    assert second.fit_cached and second.fit_report == first.fit_report
    prompts = [p for p, _ in CLEAR_CUT]
    for a, b in zip(first.analyze(prompts), second.analyze(prompts), strict=True):
        assert a.to_dict() == b.to_dict()
    # Another vote temperature is another fit; so is an index changed by add().
    other = Analyzer(ExemplarIndex.load_or_build([path], analyzer.embedder, cache), analyzer.embedder,
                     temperature=0.1)
    assert not other.fit_cached and len(list((cache / first.index.key).glob("fit-*.npz"))) == 2
    changed = ExemplarIndex.load_or_build([path], analyzer.embedder, cache)
    changed.add([{"id": "x", "prompt": "Sort a list in Python", "domain": "code"}],
                analyzer.embedder.encode(["Sort a list in Python"]))
    assert changed.directory is None and not Analyzer(changed, analyzer.embedder).fit_cached
    # A damaged file is refitted (with a warning) and replaced, never trusted.
    fit_file.write_bytes(b"not an npz")
    with caplog.at_level("WARNING", logger="batchroute.analyzer"):
        third = Analyzer(ExemplarIndex.load_or_build([path], analyzer.embedder, cache), analyzer.embedder)
    assert not third.fit_cached and "unusable" in caplog.text
    assert Analyzer(ExemplarIndex.load_or_build([path], analyzer.embedder, cache), analyzer.embedder).fit_cached
    # No cache directory, no fit file.
    assert not Analyzer(ExemplarIndex.build([path], analyzer.embedder), analyzer.embedder).fit_cached


def test_predicted_quality_from_outcome_neighbours(analyzer: Analyzer, tmp_path: Path) -> None:
    index = ExemplarIndex.build([_small_exemplar_file(tmp_path)], analyzer.embedder)
    small = Analyzer(index, analyzer.embedder)
    [a] = small.analyze(["What is 14 * 14?"])
    assert set(a.outcome_stats) == {"big", "small"}
    score_sum, weight_sum, n = a.outcome_stats["big"]
    assert n == 2 and weight_sum > 0 and score_sum == pytest.approx(weight_sum)
    assert a.predicted_quality("big", prior=0.5) > 0.5 > a.predicted_quality("small", prior=0.5)
    assert a.predicted_quality("big", prior=0.5, strength=1e9) == pytest.approx(0.5)
    assert a.predicted_quality("unknown-model", prior=0.42) == 0.42
    # outcome_k bounds the outcome neighbours; outcome_strength is the default shrinkage.
    one = Analyzer(index, analyzer.embedder, outcome_k=1, outcome_strength=1e9)
    [b] = one.analyze(["What is 14 * 14?"])
    assert b.outcome_stats["big"][2] == 1
    assert b.predicted_quality("big", prior=0.5) == pytest.approx(0.5)
    assert b.predicted_quality("big", prior=0.5, strength=0.0) == pytest.approx(1.0)
    with pytest.raises(AnalyzerError, match="outcome_k must be >= 1"):
        Analyzer(index, analyzer.embedder, outcome_k=0)
