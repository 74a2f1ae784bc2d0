"""Cheap prompt features: pure functions, exact values on clear-cut prompts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batchroute.analyzer.features import FEATURE_NAMES, extract_features, feature_matrix

REVIEW = ("Review: I bought this blender last month and it has been a disappointment. The motor is loud, "
          "the lid leaks every time I make a smoothie, and customer support never answered my emails. "
          "I would not buy it again and I would not recommend it to a friend.\n\n"
          "Is this review positive or negative? Answer with one word.")
EMAIL = ("Summarize this email in two sentences:\n\n" + "Hi team, the quarterly planning meeting moved "
         "from Tuesday to Thursday because the finance numbers are late. Please update your slides "
         "with the new revenue forecast, send them to Maria by Wednesday noon, and book the large "
         "room for the afternoon session. Thanks, Dan. " * 2)


def test_every_feature_present_and_in_unit_range() -> None:
    for prompt in ["", "hi", REVIEW, EMAIL, "x = " * 5000, "```python\nprint(1)\n```"]:
        f = extract_features(prompt)
        assert tuple(f) == FEATURE_NAMES
        assert all(0.0 <= v <= 1.0 for v in f.values()), f


def test_empty_prompt_is_all_zero() -> None:
    assert all(v == 0.0 for v in extract_features("").values())


def test_length_features_grow_with_length() -> None:
    short, long_ = extract_features("one two three"), extract_features("word " * 300)
    assert short["log_words"] < long_["log_words"]
    assert short["long_prompt"] == 0.0 and long_["long_prompt"] == 1.0


def test_code_signals() -> None:
    f = extract_features("Fix this:\n```python\ndef f(x):\n    return x[0]\n```")
    assert f["has_code_fence"] == 1.0
    assert f["code_density"] > 0.3
    assert extract_features("Write a Python function that reverses a linked list")["code_cue"] > 0
    assert extract_features("Write a limerick about a cat")["has_code_fence"] == 0.0


def test_math_signals() -> None:
    f = extract_features("Solve for x: 3x + 10 = 5(x - 2)")
    assert f["equation_density"] > 0 and f["digit_density"] > 0 and f["math_cue"] > 0
    assert extract_features("Write a poem about autumn")["equation_density"] == 0.0


@pytest.mark.parametrize(("prompt", "cue"), [
    ("Вычислите интеграл от x^2 на отрезке [0, 1]", "math"),
    ("如何证明拉格朗日中值定理", "math"),
    ("Tính tổng các số chẵn từ 1 đến 100", "math"),
    ("¿Cuántos litros caben en un cubo de 30 cm de lado?", "math"),
    ("Напиши код на C#, который сортирует массив", "code"),
    ("用Java写一个函数，反转链表", "code"),
    ("Напиши стихотворение о весне", "creative"),
    ("Escribe un poema sobre la lluvia en Buenos Aires", "creative"),
    ("请总结下面这篇文章的要点", "summarize"),
    ("Fasse den folgenden Text in drei Sätzen zusammen", "summarize"),
    ("Extrae el nombre, la fecha y el importe de esta factura", "extract"),
    ("Определи тональность отзыва: позитивный или негативный?", "classify"),
    ("Ideias de presente para o Dia dos Pais?", "brainstorm"),
    ("请推荐几本适合初学者的书", "brainstorm"),
    ("Отгадай логическую загадку: кто из троих лжёт?", "reasoning"),
])
def test_cues_in_other_languages(prompt: str, cue: str) -> None:
    f = extract_features(prompt)
    fired = {name for name, v in f.items() if name.startswith("intl_") and v > 0}
    assert fired == {f"intl_{cue}_cue"}


@pytest.mark.parametrize("prompt", [
    "Make the download resumable and resume it after a crash",
    "Calculate the logical result of this programming exercise in the programme",
    "He lied about cracking the Enigma code; list ideas for a resume",
    "Classify each ticket into a category and explain the sentiment",
    "What is the context of this story? Lose the formula and write a poem with a twist",
])
def test_english_prompts_match_no_foreign_cue(prompt: str) -> None:
    f = extract_features(prompt)
    assert {name: v for name, v in f.items() if name.startswith("intl_") and v} == {}


def test_ascii_cue_scan_equals_the_full_scan_on_ascii_text() -> None:
    from batchroute.analyzer import features as F

    texts = ["calcula el promedio", "wie viele tipps", "resumen del programa", "lösen", "x" * 50,
             "la logica del programm", "berechne die gleichung und beweise sie", *_random_texts(300)]
    for text in (t.lower() for t in texts if t.isascii()):
        full = [(m.lastgroup or "").removesuffix("_cjk") for m in F._INTL_CUES.finditer(text)]
        assert [m.lastgroup for m in F._INTL_CUES_ASCII.finditer(text)] == full


def test_text_block_after_instruction() -> None:
    assert extract_features(EMAIL)["has_text_block"] == 1.0
    assert extract_features(EMAIL)["summarize_cue"] > 0
    assert extract_features(REVIEW)["has_text_block"] == 1.0
    assert extract_features("What causes the seasons on Earth?")["has_text_block"] == 0.0


def test_instruction_after_document_is_seen() -> None:
    f = extract_features(REVIEW)
    assert f["classify_cue"] > 0
    assert f["brevity_ask"] == 1.0
    assert f["question"] == 1.0


@pytest.mark.parametrize("prompt", ["Give me 10 names for a bakery", "List some ideas for a team offsite",
                                    "Suggest five gifts for my dad"])
def test_list_asks(prompt: str) -> None:
    assert extract_features(prompt)["list_ask"] == 1.0


@pytest.mark.parametrize("prompt", ["Briefly, what is DNS?", "Answer yes or no: is Paris in France?",
                                    "Explain recursion in one sentence", "Label the sentiment: great!"])
def test_brevity_asks(prompt: str) -> None:
    assert extract_features(prompt)["brevity_ask"] == 1.0


@pytest.mark.parametrize("prompt", ["Write a detailed essay on the French revolution",
                                    "Explain in depth how TLS works", "Solve it step by step"])
def test_length_asks(prompt: str) -> None:
    assert extract_features(prompt)["length_ask"] == 1.0


def test_question_words() -> None:
    f = extract_features("What causes the seasons on Earth?")
    assert f["question"] == 1.0 and f["question_word_start"] == 1.0
    assert extract_features("Write a haiku")["question_word_start"] == 0.0


def test_deterministic_and_pure() -> None:
    assert extract_features(REVIEW) == extract_features(REVIEW)


def test_feature_matrix_matches_dicts() -> None:
    prompts = ["hi", REVIEW, EMAIL]
    m = feature_matrix(prompts)
    assert m.shape == (3, len(FEATURE_NAMES)) and m.dtype == np.float32
    for row, prompt in zip(m, prompts, strict=True):
        assert list(row) == pytest.approx([extract_features(prompt)[n] for n in FEATURE_NAMES])


def test_huge_prompt_is_bounded_and_counts_words() -> None:
    f = extract_features("lorem " * 50_000)
    assert f["long_prompt"] == 1.0 and f["log_words"] == 1.0


def test_importing_the_analyzer_does_not_load_torch() -> None:
    code = ("import sys, batchroute.analyzer; "
            "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_exemplar_reader_keeps_prompts_with_unicode_line_separators(tmp_path: Path) -> None:
    # U+2028 / U+0085 are line breaks for str.splitlines but legal inside a JSON string.
    from batchroute.analyzer.index import read_files, read_rows

    path = tmp_path / "ex.jsonl"
    rows = [{"id": "a", "prompt": "first\u2028second", "domain": "math"},
            {"id": "b", "prompt": "x\x85y", "domain": "code"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    exemplars, prompts, problems = read_rows(read_files([path]))
    assert problems == []
    assert [e.id for e in exemplars] == ["a", "b"]
    assert prompts == ["first\u2028second", "x\x85y"]


# The patterns as first written. features.py runs faster rewrites of them; these tests pin that
# every rewrite finds exactly the same matches (or the same leftmost match end).
_ORIGINAL_CODE_TOKENS = (
    r"(?:\bdef |\bclass |\breturn\b|\bimport |#include|\bpublic |\bprivate |\bfunction\b|=>|->|::|"
    r"\bconst |\blet |\bvar |\bfor \(|\bwhile \(|\bif \(|\bSELECT\b|\bFROM\b|\bWHERE\b|\bprint\(|"
    r"console\.log|\bself\.|\bnull\b|\bNone\b|[{};][ \t]*$|\w\(\)|\w\[\w*\]|\$\w+|</?\w+>)")
_ORIGINAL_EQUATION = (
    r"(?:\d\s*[-+*/^=<>×÷]\s*[\d(a-z]|[a-z]\s*[=^]\s*[-\d(a-z]|\\frac|\\sqrt|\\int|\\sum|√|∫|∑|π|"
    r"\b[a-z]\(\w\)|\b\d+\s*%|\$\s?\d)")
_ORIGINAL_QUOTED_BLOCK = r"(\"\"\"|'''|\"[^\"\n]{120,}\"|“[^”]{120,}”|^>.*$)"
_PIECES = ["\n", "\n\n", " ", "\t", ">", "> quote", "Text:", "text -", "EMAIL:", "\n  review:", ":\n", "```",
           '"""', "'''", '"' + "x" * 130 + '"', "“" + "y" * 125 + "”", "def ", "return", "#include", "=>", "->",
           "::", "for (", "SELECT", "print(", "console.log", "self.", "None", "{", ";", "f()", "a[1]", "$x",
           "<div>", "</p>", "3 + 4", "x = 5", "x^2", "\\frac", "√", "π", "f(x)", "10 %", "$ 5", "İ", "ſ", "é",
           "\u2028", "\u00a0", "word", "Hello", "?", "42", "3.5"]


def _random_texts(n: int) -> list[str]:
    import random

    rng = random.Random(7)
    return ["".join(rng.choice(_PIECES) + rng.choice(["", " ", "\n", "x"]) for _ in range(rng.choice([1, 5, 30, 200])))
            for _ in range(n)] + [REVIEW, EMAIL, "", "\n> q\n>x", ">a\n"]


def test_rewritten_patterns_match_the_originals() -> None:
    import re

    from batchroute.analyzer import features as F

    code, equation = re.compile(_ORIGINAL_CODE_TOKENS, re.MULTILINE), re.compile(_ORIGINAL_EQUATION)
    quoted, label = re.compile(_ORIGINAL_QUOTED_BLOCK, re.MULTILINE), F._BLOCK_LABEL
    for text in _random_texts(3000):
        assert F._CODE_TOKENS.findall(text) == code.findall(text)
        assert F._EQUATION.findall(text.lower()) == equation.findall(text.lower())
        q, q0 = F._QUOTED_BLOCK.search(text), quoted.search(text)
        assert (q and q.span()) == (q0 and q0.span())
        m = F._BLOCK_LABEL_AT_START.match(text) or F._BLOCK_LABEL_AFTER_NEWLINE.search(text)
        m0 = label.search(text)
        assert (m and m.end()) == (m0 and m0.end())
        assert text.split() == F._WORD.findall(text)
