"""Label evaluation: how well the analyzer's labels match a labeled JSONL file.

Use::

    from batchroute.evaluation import eval_labels
    report = eval_labels("labeled.jsonl")         # or a list of files
    report["axes"]["domain"]["macro_f1"]

Input lines are ``{"id"?, "prompt", "domain"?, "complexity"?, "style"?}``; a label that is
missing or ``null`` is skipped for that axis only. A label outside TAXONOMY.md is an error
(an :class:`~batchroute.errors.InputError` naming the line), so typos never count as misses.

Each file is analysed as the pipeline would analyse it as one job: in chunks of the analyze
stage's message size (``BATCHROUTE_ANALYZE_CHUNK_SIZE``), in a fixed shuffled order, because
the analyzer adapts its domain prior to the label mix of each batch it is given
(:mod:`batchroute.analyzer.priors`); analysing every file in one call would adapt to the mix
of all files together, which no job sees.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchroute.errors import InputError
from batchroute.evaluation.metrics import classification_report, top_confusions
from batchroute.taxonomy import COMPLEXITIES, DOMAINS, STYLES

if TYPE_CHECKING:
    from batchroute.analyzer import Analyzer

LABEL_AXES: dict[str, tuple[str, ...]] = {"domain": DOMAINS, "complexity": COMPLEXITIES, "style": STYLES}


def script_of(prompt: str) -> str:
    """``ascii``, ``latin`` (accented Latin letters, other non-ASCII characters) or ``other``
    (over 30% of the letters beyond the Latin scripts: Cyrillic, CJK, Arabic, ...). The
    embedding model is English-only, so accuracy per script shows where it is weak."""
    if prompt.isascii():
        return "ascii"
    letters = [c for c in prompt if c.isalpha()]
    return "other" if letters and sum(c > "\u024f" for c in letters) > 0.3 * len(letters) else "latin"


def domain_accuracy_by_script(rows: Sequence[dict[str, Any]], analyses: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``{script: {"n", "accuracy"}}`` (see :func:`script_of`) over the rows with a domain label."""
    by_script: dict[str, list[bool]] = {}
    for r, a in zip(rows, analyses, strict=True):
        if r.get("domain"):
            by_script.setdefault(script_of(r["prompt"]), []).append(a.domain == r["domain"])
    return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for k, v in sorted(by_script.items())}


def prompt_hash(prompt: str) -> str:
    """sha256 of the whitespace-normalised prompt (how the benchmark recognises the same prompt)."""
    return hashlib.sha256(" ".join(prompt.split()).encode("utf-8")).hexdigest()


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line; InputError naming file and line otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot be read: {exc}", source=str(path)) from exc
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: prompts hold U+2028, U+0085
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as exc:
            raise InputError(f"not JSON: {exc}", source=str(path), line=n) from exc


def read_labeled(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows of labeled JSONL files with a non-empty prompt (``_file`` added); bad labels raise."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        for n, row in iter_jsonl(path):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise InputError("needs a non-empty string 'prompt'", source=str(path), line=n, field="prompt")
            for axis, allowed in LABEL_AXES.items():
                value = row.get(axis)
                if value is not None and value not in allowed:
                    raise InputError(f"{value!r} is not one of {list(allowed)}", source=str(path), line=n,
                                     field=axis)
            row["_file"] = path.name
            rows.append(row)
    return rows


def _exemplar_hashes(paths: Sequence[Path]) -> set[str]:
    """Prompt hashes of the exemplar files (``*.jsonl`` of directories), for a contamination check."""
    out: set[str] = set()
    for p in paths:
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            for line in f.read_text(encoding="utf-8").split("\n"):
                try:
                    prompt = json.loads(line).get("prompt")
                except (ValueError, AttributeError):
                    continue
                if isinstance(prompt, str):
                    out.add(prompt_hash(prompt))
    return out


def analyze_as_jobs(analyzer: Analyzer, rows: Sequence[dict[str, Any]], chunk: int,
                    seed: int = 0) -> list[Any]:
    """One analysis per row (in order), made as the analyze stage makes them.

    Rows are grouped by their ``_file`` (one job per file), shuffled with ``seed`` (a file
    sorted by category must not hand the analyzer ready-made single-label chunks) and analysed
    ``chunk`` prompts per call.
    """
    out: list[Any] = [None] * len(rows)
    by_file: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_file.setdefault(str(r.get("_file", "")), []).append(i)
    rng = random.Random(seed)
    for ix in by_file.values():
        rng.shuffle(ix)
        for start in range(0, len(ix), chunk):
            part = ix[start:start + chunk]
            for i, a in zip(part, analyzer.analyze([rows[i]["prompt"] for i in part]), strict=True):
                out[i] = a
    return out


def eval_labels(path: Path | str | Sequence[Path | str], analyzer: Analyzer | None = None, *,
                exemplar_paths: Sequence[Path] | None = None, per_file: bool = True,
                chunk: int | None = None) -> dict[str, Any]:
    """Run the analyzer on labeled prompts and score its labels per axis.

    Args:
        path: a labeled JSONL file, or several (scored together, and per file with ``per_file``).
        analyzer: the analyzer to evaluate; default :func:`batchroute.analyzer.get_analyzer`.
        chunk: prompts per analyze call (default: the analyze stage's chunk size); each file
            is one job (see the module docstring).
        exemplar_paths: exemplar files the analyzer was built from, to count evaluation prompts
            that are also exemplars (a number measured on them is not a result); default the
            bundled exemplars when ``analyzer`` is None.

    Returns per axis present (``domain``, ``complexity``, ``style``): ``n``, ``accuracy``,
    ``macro_f1`` (over labels in truth ∪ predictions), ``macro_f1_true_labels``, ``per_class``
    precision / recall / F1 / support, ``confusion`` (``labels`` as TAXONOMY names in TAXONOMY
    order, ``matrix[true][predicted]``) and ``top_confusions``; plus ``rows``, ``files``,
    ``in_exemplars``, ``seconds`` and ``domain_accuracy_by_script`` (``n`` and ``accuracy`` per
    :func:`script_of`).
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    rows = read_labeled(paths)
    if analyzer is None:
        from batchroute.analyzer import BUNDLED_EXEMPLARS, get_analyzer

        analyzer = get_analyzer()
        if exemplar_paths is None:
            exemplar_paths = [BUNDLED_EXEMPLARS]
    if chunk is None:
        from batchroute.settings import get_settings

        chunk = get_settings().analyze_chunk_size
    t0 = time.perf_counter()
    analyses = analyze_as_jobs(analyzer, rows, chunk)
    seconds = time.perf_counter() - t0
    report: dict[str, Any] = {"files": [p.name for p in paths], "rows": len(rows), "axes": {},
                              "seconds": round(seconds, 2),
                              "prompts_per_s": round(len(rows) / seconds, 1) if seconds > 0 and rows else None}
    if exemplar_paths:
        hashes = _exemplar_hashes(exemplar_paths)
        report["in_exemplars"] = sum(prompt_hash(r["prompt"]) in hashes for r in rows)
    report["axes"] = _score_axes(rows, analyses)
    report["domain_accuracy_by_script"] = domain_accuracy_by_script(rows, analyses)
    if per_file and len(paths) > 1:
        by_file: dict[str, Any] = {}
        for p in paths:
            sel = [i for i, r in enumerate(rows) if r["_file"] == p.name]
            axes = _score_axes([rows[i] for i in sel], [analyses[i] for i in sel])
            by_file[p.name] = {axis: {k: v for k, v in rep.items() if k in ("n", "accuracy", "macro_f1")}
                               for axis, rep in axes.items()}
        report["by_file"] = by_file
    return report


def _score_axes(rows: Sequence[dict[str, Any]], analyses: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for axis, names in LABEL_AXES.items():
        pairs = [(r[axis], getattr(a, axis)) for r, a in zip(rows, analyses, strict=True)
                 if r.get(axis) is not None]
        if not pairs:
            continue
        truth, pred = zip(*pairs, strict=True)
        rep = classification_report(truth, pred, labels=names)
        rep["top_confusions"] = top_confusions(rep)
        out[axis] = rep
    return out


__all__ = ["LABEL_AXES", "analyze_as_jobs", "domain_accuracy_by_script", "eval_labels", "prompt_hash", "read_labeled",
           "script_of"]
