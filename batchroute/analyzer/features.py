"""Cheap, pure text features of a prompt (no model, no I/O).

Call :func:`extract_features` on one prompt to get a ``dict[str, float]`` keyed by
:data:`FEATURE_NAMES`; :func:`feature_matrix` stacks them for a batch. Every value lies in
[0, 1] (counts are squashed) so the features can feed a linear model next to kNN vote
probabilities without scaling. The analyzer stores them on each ``Analysis.features``.

    >>> f = extract_features("Give me 10 names for a bakery")
    >>> f["list_ask"], f["brevity_ask"]
    (1.0, 0.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "log_words",
    "log_chars",
    "long_prompt",
    "has_code_fence",
    "code_density",
    "starts_with_code",
    "digit_density",
    "equation_density",
    "numeric_question",
    "number_count",
    "has_text_block",
    "text_block_share",
    "question",
    "question_word_start",
    "list_ask",
    "brevity_ask",
    "length_ask",
    "summarize_cue",
    "extract_cue",
    "classify_cue",
    "creative_cue",
    "math_cue",
    "reasoning_cue",
    "code_cue",
    "brainstorm_cue",
    "multi_constraint",
    "intl_math_cue",
    "intl_code_cue",
    "intl_creative_cue",
    "intl_summarize_cue",
    "intl_extract_cue",
    "intl_classify_cue",
    "intl_brainstorm_cue",
    "intl_reasoning_cue",
)

SCAN_HEAD_CHARS = 3_000
SCAN_TAIL_CHARS = 1_000
SCAN_CHARS = SCAN_HEAD_CHARS + SCAN_TAIL_CHARS
_I = re.IGNORECASE
_WORD = re.compile(r"\S+")
_CODE_FENCE = re.compile(r"```|~~~")
# The keyword alternatives share one leading \b (sre then rejects most positions with a single
# test instead of ~20): ~5x faster and the same matches, since no keyword can start where one
# of the symbol alternatives (#include, =>, ->, ::, console.log) does.
_CODE_TOKENS = re.compile(
    r"(?:\b(?:def |class |return\b|import |public |private |function\b|const |let |var |for \(|while \(|"
    r"if \(|SELECT\b|FROM\b|WHERE\b|print\(|self\.|null\b|None\b)|#include|=>|->|::|console\.log|"
    r"[{};][ \t]*$|\w(?:\(\)|\[\w*\])|\$\w+|</?\w+>)",
    re.MULTILINE,
)
_DIGIT = re.compile(r"\d")
# The first line of a prompt that is code itself (a stub, a file, markup) rather than a request.
_CODE_START = re.compile(
    r"^\s*(?:def |class |import |from \w+ import|#include|<!DOCTYPE|<\w+[ >]|package |using |"
    r"public |function |const |let |var |SELECT |CREATE |@\w+|#!|\{|//|/\*|\w+\s*=\s*[\[{(\w\"'])",
    re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])\$?\d[\d,]*(?:\.\d+)?%?")
_QUANTITY_QUESTION = re.compile(
    r"\b(?:how (?:many|much|long|far|fast|old|often)|what (?:is|was|will be) the (?:total|sum|"
    r"average|difference|cost|price|number|amount|probability|value|area|percentage)|calculate|"
    r"compute|find the|what percent|how much more|how many more)\b",
    re.IGNORECASE)
# The lookahead only skips positions where no alternative can start (a letter not followed by
# [=^(], or a space): 2x faster, same matches.
_EQUATION = re.compile(
    r"(?=[^a-z\s]|[a-z]\s*[=^(])"
    r"(?:\d\s*[-+*/^=<>×÷]\s*[\d(a-z]|[a-z]\s*[=^]\s*[-\d(a-z]|\\frac|\\sqrt|\\int|\\sum|√|∫|∑|π|"
    r"\b[a-z]\(\w\)|\b\d+\s*%|\$\s?\d)",
    _I,
)
# An instruction followed by pasted material: "Text:", "Email:", a colon ending a line, a quote.
_BLOCK_LABEL = re.compile(
    r"(?:^|\n)\s*(?:text|document|email|e-mail|article|passage|paragraph|review|transcript|input|"
    r"message|post|tweet|thread|report|context|story|abstract|notes?|letter|conversation|dialogue|"
    r"chat|excerpt|sentence|comment|ticket|invoice|resume|cv|data|record|description)\s*[:\-]",
    _I,
)
# _BLOCK_LABEL.search is done as two scans with the same leftmost match (in _text_block_share):
# one anchored at the start, one that starts with a literal "\n", which sre finds with a fast
# string search instead of trying the whole pattern at every position (~10x faster).
_BLOCK_LABEL_AT_START = re.compile(_BLOCK_LABEL.pattern.replace("(?:^|\\n)", "", 1), _I)
_BLOCK_LABEL_AFTER_NEWLINE = re.compile(_BLOCK_LABEL.pattern.replace("(?:^|\\n)", "\\n", 1), _I)
_COLON_NEWLINE = re.compile(r":\s*\n")
# A "> " quote line is matched as ">" not preceded by a character other than "\n" (that is, ^>):
# every alternative then starts with a literal, so sre skips the other characters in C (~5x).
_QUOTED_BLOCK = re.compile(r"(\"\"\"|'''|\"[^\"\n]{120,}\"|“[^”]{120,}”|>(?<![^\n]>).*$)", re.MULTILINE)
_QUESTION_START = re.compile(
    r"^\s*(?:what|why|how|who|whom|whose|when|where|which|is|are|was|were|do|does|did|can|could|"
    r"should|would|will|has|have|explain|describe)\b",
    _I,
)
_LIST_ASK = re.compile(
    r"(?:\blist\b|\bideas?\b|\bsuggest(?:ions?)?\b|\bbrainstorm|\boptions\b|\balternatives\b|"
    r"\btips\b|\bways to\b|\bnames? for\b|\b(?:\d+|three|four|five|six|seven|eight|ten|twenty|a few|"
    r"several|some)\s+(?:\w+\s+)?(?:names|ideas|ways|tips|titles|slogans|suggestions|examples|"
    r"reasons|options|questions|things|places|activities|themes|taglines|topics|gifts|recipes|"
    r"strategies|bullet points|bullets|points)\b)",
    _I,
)
_BREVITY_ASK = re.compile(
    r"(?:\bbriefly\b|\bbrief\b|\bone word\b|\bsingle word\b|\bin one sentence\b|\bone sentence\b|"
    r"\bone-liner\b|\bone line\b|\byes or no\b|\byes/no\b|\btrue or false\b|\blabel\b|\bshort answer\b|"
    r"\bjust the\b|\bonly the\b|\bonly (?:return|answer|output|respond|reply|give|say)\b|"
    r"\bno explanation\b|\bwithout explanation\b|\bconcise(?:ly)?\b|\btl;?dr\b|\bin (?:a )?few words\b|"
    r"\bshort\b|\bquick(?:ly)?\b|\bnumber only\b|\brespond with\b|\banswer with\b|\bin \d+ words\b|"
    r"\bunder \d+ words\b|\bone[- ]sentence\b|\bone[- ]paragraph\b)",
    _I,
)
_LENGTH_ASK = re.compile(
    r"(?:\bdetailed\b|\bin detail\b|\bessay\b|\bin depth\b|\bin-depth\b|\bstep[- ]by[- ]step\b|"
    r"\bcomprehensive\b|\bthorough(?:ly)?\b|\bat least \d+ words\b|\b\d{3,} words\b|\belaborate\b|"
    r"\bfull (?:program|implementation|report|story|article)\b|\blong\b|\bexplain (?:why|how)\b|"
    r"\bwalk me through\b|\bshow your work\b|\bcomplete (?:program|implementation|code)\b|"
    r"\bblog post\b|\barticle\b|\breport\b|\bguide\b|\btutorial\b|\bchapter\b|\bplan\b)",
    _I,
)
_SUMMARIZE = re.compile(
    r"(?:\bsummar|\btl;?dr\b|\bcondense\b|\bkey (?:points|takeaways)\b|\bmain points\b|\bgist\b|"
    r"\babstract\b|\brecap\b|\bboil (?:it|this) down\b|\bshorten\b|\boverview of (?:this|the following)\b)",
    _I,
)
_EXTRACT = re.compile(
    r"(?:\bextract|\bpull out\b|\bparse\b|\bidentify (?:the|all|every)\b|\bfind (?:all|every|the)\b|"
    r"\bas json\b|\bin json\b|\bjson\b|\bcsv\b|\bfields?\b|\bentities\b|\bnamed entit|\bmentioned\b|"
    r"\baccording to the (?:text|passage|article|document)\b|\bfrom (?:the|this) (?:text|passage|"
    r"email|article|document|invoice|paragraph|review|transcript|receipt)\b|\bbased on the (?:text|"
    r"passage|article|paragraph)\b)",
    _I,
)
_CLASSIFY = re.compile(
    r"(?:\bclassif|\bcategori[sz]|\bsentiment\b|\bpositive or negative\b|\bpositive, negative\b|"
    r"\bspam\b|\btopic of\b|\bintent\b|\blabel (?:it|this|the)\b|\bwhich category\b|\bone of (?:the "
    r"following|these) (?:categories|labels)\b|\bcategory\b|\btoxic\b|\bis this (?:review|email|"
    r"message|tweet|text|sentence)\b|\bwhat language\b|\bdetect the language\b|\btag (?:it|this)\b|"
    r"\bsarcas|\bformal or informal\b)",
    _I,
)
_CREATIVE = re.compile(
    r"(?:\bstory\b|\bpoem\b|\bpoetry\b|\blimerick\b|\bhaiku\b|\bsonnet\b|\bslogan\b|\bjoke\b|\blyrics\b|"
    r"\bsong\b|\bfiction\b|\bscript\b|\bdialogue\b|\brole[- ]?play\b|\bpretend\b|\bimagine you\b|"
    r"\bact as\b|\bin the style of\b|\brewrite\b|\brhym|\bnarrat|\bcharacter\b|\bfairy tale\b|"
    r"\bbedtime\b|\bcaption\b|\btagline\b|\bspeech\b|\bletter\b|\bemail to\b|\bcompose\b|\bdraft\b)",
    _I,
)
_MATH = re.compile(
    r"(?:\bsolve\b|\bcalculate\b|\bcompute\b|\bequation\b|\bprobability\b|\bprove\b|\bproof\b|"
    r"\bintegral\b|\bderivative\b|\bhow many\b|\bhow much\b|\bpercent|\baverage\b|\bsum of\b|"
    r"\bproduct of\b|\bremainder\b|\bprime\b|\btheorem\b|\bmatrix\b|\bvariance\b|\bmean\b|\bmedian\b|"
    r"\bfraction\b|\bratio\b|\barea\b|\bvolume\b|\btriangle\b|\bcircle\b|\bfind x\b|\bsimplify\b|"
    r"\bfactor\b|\bpolynomial\b|\blimit\b|\bmodulo\b|\bexpected value\b)",
    _I,
)
_REASONING = re.compile(
    r"(?:\bpuzzle\b|\briddle\b|\blogic\b|\bdeduc|\binfer\b|\bwho (?:is|owns|lives|sits)\b|"
    r"\bsits? (?:next to|to the left|to the right)\b|\bif and only if\b|\bcannot both\b|\bconstraints?\b|"
    r"\bschedul|\bplan (?:a|the|my)\b|\bwhich (?:option|choice|plan)\b|\btrade-?offs?\b|\bargument\b|"
    r"\bfallacy\b|\bassumption\b|\bconclusion\b|\bstrengthen\b|\bweaken\b|\bknights? and knaves?\b|"
    r"\bliar\b|\btruth-teller\b|\bthen\b.*\bif\b|\beach of\b|\bexactly one\b|\bnot next to\b)",
    _I,
)
_CODE_WORDS = re.compile(
    r"(?:\bpython\b|\bjavascript\b|\btypescript\b|\bjava\b|\bc\+\+|\bc#|\brust\b|\bgolang\b|\bgo "
    r"function\b|\bsql\b|\bbash\b|\bshell\b|\bregex\b|\bregular expression\b|\bfunction\b|\bscript\b|"
    r"\bcode\b|\bbug\b|\bdebug\b|\bcompile|\bapi\b|\bclass\b|\bmethod\b|\balgorithm\b|\bimplement\b|"
    r"\brefactor\b|\bunit tests?\b|\bquery\b|\bdataframe\b|\bpandas\b|\breact\b|\bhtml\b|\bcss\b|"
    r"\bdocker|\bkubernetes\b|\blinked list\b|\bbinary tree\b|\barray\b|\bstack trace\b|\bexception\b)",
    _I,
)
_BRAINSTORM = re.compile(
    r"(?:\bideas?\b|\bsuggest|\bbrainstorm|\brecommend|\badvice\b|\btips\b|\bhow can i\b|\bhow do i\b|"
    r"\bwhat should i\b|\bways to\b|\boptions for\b|\bwhat are some\b|\bgive me some\b|\bcome up with\b|"
    r"\bnames? for\b|\bthemes? for\b|\bgift\b|\bactivities\b|\bimprove my\b|\bstrategies\b)",
    _I,
)
_CONSTRAINT = re.compile(
    r"(?:\bmust\b|\bshould not\b|\bmust not\b|\bwithout using\b|\bno more than\b|\bat most\b|"
    r"\bat least\b|\bexactly\b|\bonly\b|\bdo not\b|\bdon't\b|\bensure\b|\bmake sure\b|\brequirements?\b|"
    r"\bconstraints?\b|\bin o\(|\bcomplexity\b|\bhandle\b|\bedge cases?\b)",
    _I,
)


# The same cues in other languages (Russian, Chinese, Japanese, Korean, Spanish, Portuguese,
# French, German, Vietnamese): the embedding model is English-only, so on other languages these
# cues carry much of the signal. They are features of their own (``intl_<cue>_cue``), not added to
# the English cues: the stacker then learns their weights from the foreign-language exemplars
# without moving the English ones (one shared column cost ~0.02 held-out macro-F1 on English
# prompts). Per cue: word stems (matched at a word start; none matches a common English word:
# pinned by a test) and CJK terms (matched anywhere: no spaces between words). Alternatives are
# plain "|"-separated, so the ASCII ones can be picked out.
_INTL_TERMS: dict[str, tuple[str, str]] = {
    "math": (
        r"реши|решен|вычисл|найди|найти|докаж|доказ|уравнен|интеграл|производн|вероятност|процент|"
        r"площад|объ[её]м|скорост|формул|матриц|посчитай|рассчита|сколько|"
        r"calcula\b|calcule\b|calcular|calculez|resuelve|resolver|resolva|résou|ecuacion|ecuación|"
        r"equacao|equação|équation|demuestr|demostr|démontr|derivada|dérivée|probabilidad|"
        r"probabilidade|probabilité|cuant[oa]s|cuánt[oa]s|quant[oa]s|combien|porcentaje|porcentagem|"
        r"pourcentage|promedio|moyenne|berechne|löse|lösen|gleichung|beweis|ableitung|"
        r"wahrscheinlichkeit|wie ?viele?|prozent|hãy tính|tính toán|tính giá trị|tính tổng|tính diện|tính thể|"
        r"tính xác|tính lãi|tính số|giải bài|giải phương|giải hệ|giải bất|giải toán|phương trình|chứng minh|"
        r"tích phân|đạo hàm|xác suất|bao nhiêu|diện tích|thể tích|lãi suất",
        r"求解|求出|计算|證明|证明|方程|积分|積分|导数|概率|確率|面积|面積|体积|公式|数学|數學|矩阵|多少|計算|"
        r"계산|증명|방정식|확률|적분"),
    "code": (
        r"код[ау]?\b|программ|функци|скрипт|ошибк|массив|алгоритм|codigo|código|programa\b|"
        r"funcion|función|funcao|função|algoritmo|fonction|algorithme|programmier|programm\b|funktion|"
        r"skript|algorithmus|lập trình|chương trình|thuật toán",
        r"代码|程序|函数|脚本|算法|报错|数组|接口|编程|コード|プログラム|関数|スクリプト|実装|코드|프로그램|함수"),
    "creative": (
        r"стих|рассказ[аы]?\b|сказк|песн|сочинени|сценари|шутк|анекдот|поэм|слоган|poema|cuento|cancion|"
        r"canción|cancao|canção|chiste|piada|guion|poème|conte\b|chanson|blague|scénario|"
        r"gedicht|märchen|witz|drehbuch|bài thơ|thơ\b|truyện|câu chuyện|bài hát|kịch bản",
        r"诗|故事|小说|歌词|剧本|笑话|作文|文案|扮演|口号|物語|小説|歌詞|이야기|소설"),
    "summarize": (
        r"кратко излож|резюм|перескаж|краткое содержание|основные мысли|тезис|resumen\b|resumir|"
        r"resuma\b|resumo\b|résumez|résumer|sintetiza|synthèse|zusammenfass|fasse .{0,40}zusammen|tóm tắt",
        r"总结|概括|摘要|归纳|要点|要約|まとめ|요약"),
    "extract": (
        r"извлеки|извлечь|выдели|выпиши|extrae|extraer|extraia|extrair|extrai[st]|extraire|extrayez|"
        r"extrahier|trích xuất",
        r"提取|抽取|找出|抽出|추출"),
    "classify": (
        r"классифицир|категори|тональност|позитивн|негативн|спам|clasific|classifique|"
        r"classifica\b|classifie[rz]?\b|categoria|categoría|catégorie|sentimiento|sentimento|"
        r"positivo o negativo|positivo ou negativo|positif ou négatif|klassifizier|kategori|"
        r"positiv oder negativ|phân loại|tích cực hay tiêu cực",
        r"分类|類別|类别|情感分析|情感倾向|正面还是负面|垃圾邮件|属于哪|分類|분류"),
    "brainstorm": (
        r"иде[июяй]|предложи|посоветуй|совет[ыо]?в?\b|вариант|ideias|sugier|sugerenc|sugest|sugira|recomiend|"
        r"recomend|consejos|dicas|idées|suggère|conseils|recommande|ideen|vorschläge|tipps|empfehl|"
        r"ý tưởng|gợi ý|đề xuất|lời khuyên",
        r"建议|想法|点子|推荐|主意|アイデア|提案|おすすめ|아이디어|추천"),
    "reasoning": (
        r"загадк|логическ|головоломк|acertijo|adivinanza|logica\b|lógica\b|charada|énigme|devinette|"
        r"logique|rätsel|logik|câu đố|suy luận",
        r"谜题|逻辑|推理|谜语|脑筋急转弯|論理|なぞなぞ|수수께끼|논리"),
}


def _intl_cues(ascii_only: bool) -> re.Pattern[str]:
    """One scan for every cue (a match's group names its cue); ``ascii_only`` keeps the word
    stems that can match ASCII text, for the common all-ASCII prompt (~5x cheaper)."""
    words, cjk = [], []
    for cue, (stems, terms) in _INTL_TERMS.items():
        alts = [a for a in stems.split("|") if a.isascii() or not ascii_only]
        if any(a.count("(") != a.count(")") for a in alts):
            raise ValueError(f"{cue}: a stem holds '|' inside a group; write its variants out")
        words.append(f"(?P<{cue}>{'|'.join(alts)})")
        if not ascii_only:
            cjk.append(f"(?P<{cue}_cjk>{terms})")
    # The shared leading \b rejects most positions with one test (as in _CODE_TOKENS).
    return re.compile("|".join([rf"\b(?:{'|'.join(words)})", *cjk]))


_INTL_CUES = _intl_cues(ascii_only=False)
_INTL_CUES_ASCII = _intl_cues(ascii_only=True)

# These are matched against lowercased text: Python's re is ~3x slower with IGNORECASE on these
# alternations, and the cue scans were the larger part of the feature cost. (Their patterns hold
# no upper-case literal, so dropping the flag on lowercased input matches exactly the same.)
_LOWERCASE_INPUT = ("_EQUATION", "_QUANTITY_QUESTION", "_LIST_ASK", "_BREVITY_ASK", "_LENGTH_ASK", "_SUMMARIZE",
                    "_EXTRACT", "_CLASSIFY", "_CREATIVE", "_MATH", "_REASONING", "_CODE_WORDS", "_BRAINSTORM",
                    "_CONSTRAINT")
for _name in _LOWERCASE_INPUT:
    globals()[_name] = re.compile(globals()[_name].pattern)

def _squash(count: float, scale: float) -> float:
    """Map a non-negative count to [0, 1): ``count / (count + scale)``."""
    return count / (count + scale) if count > 0 else 0.0


def _hits(pattern: re.Pattern[str], text: str, scale: float = 1.0) -> float:
    return _squash(float(len(pattern.findall(text))), scale)


def _intl_counts(text: str) -> dict[str, int]:
    """Matches of each non-English cue (the keys of ``_INTL_TERMS``) in lowercased ``text``."""
    counts: dict[str, int] = {}
    for m in (_INTL_CUES_ASCII if text.isascii() else _INTL_CUES).finditer(text):
        cue = (m.lastgroup or "").removesuffix("_cjk")
        counts[cue] = counts.get(cue, 0) + 1
    return counts


def _text_block_share(text: str, words: int) -> tuple[float, float]:
    """(has a pasted block after an instruction, share of words inside that block)."""
    if words < 25:
        return 0.0, 0.0
    starts: list[int] = []
    label = _BLOCK_LABEL_AT_START.match(text) or _BLOCK_LABEL_AFTER_NEWLINE.search(text)
    if label is not None:
        starts.append(label.end())
    for pattern in (_COLON_NEWLINE, _CODE_FENCE, _QUOTED_BLOCK):
        m = pattern.search(text)
        if m is not None:
            starts.append(m.end())
    if not starts:
        # Several paragraphs where the first one is short: an instruction then pasted material.
        paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        if len(paras) >= 2 and len(paras[0].split()) <= 40:
            starts.append(len(paras[0]))
    if not starts:
        return 0.0, 0.0
    block_words = len(text[min(starts):].split())
    share = block_words / words
    return (1.0 if block_words >= 25 and share >= 0.4 else 0.0), share


def extract_features(prompt: str) -> dict[str, float]:
    """Cheap features of one prompt, keyed by :data:`FEATURE_NAMES`, each in [0, 1].

    Pure and fast (a handful of regex scans); long prompts are scanned up to their first
    3,000 characters plus the last 1,000 so the cost stays bounded.
    """
    # The densities are estimated on at most the first 3,000 and last 1,000 characters: enough
    # to tell code, maths or pasted text apart, and it bounds the cost on huge prompts.
    text = prompt if len(prompt) <= SCAN_CHARS else prompt[:SCAN_HEAD_CHARS] + "\n" + prompt[-SCAN_TAIL_CHARS:]
    n_chars = len(prompt)
    tokens = text.split()  # the same words as _WORD.findall (both split on str.isspace), 2x faster
    words = len(tokens) if len(prompt) <= SCAN_CHARS else len(prompt.split())
    head = " ".join(tokens[:80])
    tail = " ".join(tokens[-60:])
    # Cues are looked for where the instruction lives: the head and the tail of the prompt.
    ask = head if words <= 140 else head + " \n " + tail
    ask_l = ask.lower()
    block, share = _text_block_share(text, words)
    code_lines = len(_CODE_TOKENS.findall(text))
    n_lines = text.count("\n") + 1
    digits = len(_DIGIT.findall(text))
    stripped = prompt.strip()
    n_numbers = len(_NUMBER.findall(ask_l))
    intl = _intl_counts(ask_l)
    feats = {
        "log_words": min(math.log1p(words) / math.log1p(2000), 1.0),
        "log_chars": min(math.log1p(n_chars) / math.log1p(12000), 1.0),
        "long_prompt": 1.0 if words >= 200 else 0.0,
        "has_code_fence": 1.0 if _CODE_FENCE.search(text) else 0.0,
        "code_density": min(code_lines / max(n_lines, 3), 1.0),
        "starts_with_code": 1.0 if _CODE_START.match(text) else 0.0,
        "digit_density": min(digits / max(len(text), 1) * 10.0, 1.0),
        "equation_density": _squash(float(len(_EQUATION.findall(text.lower()))), 3.0),
        "numeric_question": 1.0 if n_numbers >= 2 and _QUANTITY_QUESTION.search(ask_l)
        else 0.0,
        # Each quantity in a word problem is usually one more step.
        "number_count": _squash(float(n_numbers), 4.0),
        "has_text_block": block,
        "text_block_share": share,
        "question": 1.0 if stripped.endswith("?") or "?" in tail[-200:] else 0.0,
        "question_word_start": 1.0 if _QUESTION_START.match(stripped) else 0.0,
        "list_ask": 1.0 if _LIST_ASK.search(ask_l) else 0.0,
        "brevity_ask": 1.0 if _BREVITY_ASK.search(ask_l) else 0.0,
        "length_ask": 1.0 if _LENGTH_ASK.search(ask_l) else 0.0,
        "summarize_cue": _hits(_SUMMARIZE, ask_l),
        "extract_cue": _hits(_EXTRACT, ask_l),
        "classify_cue": _hits(_CLASSIFY, ask_l),
        "creative_cue": _hits(_CREATIVE, ask_l),
        "math_cue": _hits(_MATH, ask_l),
        "reasoning_cue": _hits(_REASONING, ask_l),
        "code_cue": _hits(_CODE_WORDS, ask_l),
        "brainstorm_cue": _hits(_BRAINSTORM, ask_l),
        "multi_constraint": _hits(_CONSTRAINT, ask_l, 2.0),
        **{f"intl_{cue}_cue": _squash(float(intl.get(cue, 0)), 1.0) for cue in _INTL_TERMS},
    }
    return feats


def feature_matrix(prompts: Sequence[str]) -> np.ndarray:
    """Features of many prompts as a float32 matrix, columns in :data:`FEATURE_NAMES` order."""
    out = np.zeros((len(prompts), len(FEATURE_NAMES)), dtype=np.float32)
    for i, prompt in enumerate(prompts):
        f = extract_features(prompt)
        out[i] = [f[name] for name in FEATURE_NAMES]
    return out
