"""prepare_text: what the analyzer embeds of a long prompt (pure; no model)."""

from __future__ import annotations

from batchroute.analyzer.embedder import CJK_WORDS_PER_CHAR, PrepConfig, prepare_text

PREP = PrepConfig(head_words=8, tail_words=4, max_seq_length=32)


def test_short_prompts_are_only_collapsed() -> None:
    assert prepare_text("  a  b\n c ", PREP) == "a b c"
    assert prepare_text("请  总结\n一下", PREP) == "请 总结 一下"


def test_long_latin_prompt_keeps_head_and_tail_words() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    assert prepare_text(text, PREP) == "w0 w1 w2 w3 w4 w5 w6 w7 ... w36 w37 w38 w39"


def test_long_cjk_prompt_keeps_its_tail_instruction() -> None:
    # No spaces: str.split sees one word, so the cut must count characters.
    document = "甲乙丙丁戊己庚辛壬癸" * 10
    instruction = "请总结"
    out = prepare_text(document + instruction, PREP)
    head, tail = out.split(" ... ")
    assert document.startswith(head) and (document + instruction).endswith(tail)
    assert tail.endswith(instruction)
    assert len(head) == int(PREP.head_words / CJK_WORDS_PER_CHAR)
    assert len(tail) == int(PREP.tail_words / CJK_WORDS_PER_CHAR)


def test_cjk_text_within_budget_is_kept_whole() -> None:
    text = "今日は" * 3  # 9 characters = 6.75 words < 12
    assert prepare_text(text, PREP) == text


def test_mixed_text_counts_latin_words_and_cjk_characters() -> None:
    text = "Summarize 这篇文章 " + " ".join(f"w{i}" for i in range(30)) + " 用三句话"
    head, tail = prepare_text(text, PREP).split(" ... ")
    # "Summarize" (1) + 4 characters (3.0) + w0..w3 (4) = 8 words.
    assert head == "Summarize 这篇文章 w0 w1 w2 w3"
    # w29 (1) + 4 characters (3.0) = 4 words.
    assert tail == "w29 用三句话"


def test_preparation_off_embeds_everything() -> None:
    text = "字" * 500
    assert prepare_text(text, PrepConfig(head_words=0, tail_words=0, max_seq_length=256)) == text


def _reference_cut(text: str, prep: PrepConfig) -> str:
    """The CJK cut written plainly over every unit of the text (the module scans only what it keeps)."""
    from batchroute.analyzer.embedder import _CJK_CHAR, _CJK_UNIT, CHARS_PER_WORD

    text = " ".join(text.split())
    units = [(m.start(), m.end(), CJK_WORDS_PER_CHAR if len(m.group()) == 1 and _CJK_CHAR.match(m.group()) else 1.0)
             for m in _CJK_UNIT.finditer(text)]
    if sum(w for _, _, w in units) <= prep.head_words + prep.tail_words:
        return text
    head_end, left = 0, float(prep.head_words)
    for _, end, w in units:
        if left < w:
            break
        left, head_end = left - w, end
    tail_start, left = len(text), float(prep.tail_words)
    for start, _, w in reversed(units):
        if left < w:
            break
        left, tail_start = left - w, start
    return (text[:head_end][: prep.head_words * CHARS_PER_WORD] + " ... "
            + text[tail_start:][-prep.tail_words * CHARS_PER_WORD:])


def test_cjk_cut_equals_the_plain_version_on_random_texts() -> None:
    import random

    rng = random.Random(11)
    pieces = ["字", "の", "カ", "한", "word", "longerword", "x" * 30, " ", "  ", "\n", "，", "。", "3.14", "请总结"]
    for prep in (PREP, PrepConfig(), PrepConfig(head_words=5, tail_words=2, max_seq_length=16)):
        for _ in range(400):
            text = "字" + "".join(rng.choice(pieces) for _ in range(rng.choice([1, 5, 20, 80, 300])))
            # The same words; the plain version may keep a space where the character cap cuts.
            assert prepare_text(text, prep).split() == _reference_cut(text, prep).split(), text
