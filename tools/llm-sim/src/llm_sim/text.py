"""Lexical text helpers: terms, sentences and a small BM25 ranking over sentences.

Everything here is deterministic: the same input always gives the same ranking, so tests of Cai
can assert on what the simulator answers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

# Words are runs of letters and digits (any script); underscores and punctuation separate them.
_WORD_RE = re.compile(r"[^\W_]+")
# A sentence ends at . ! or ? followed by whitespace, or at a line break.
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
# Sentences longer than this (e.g. a JSON tool result with no full stop) are cut into pieces.
MAX_SENTENCE_WORDS = 60

STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are aren as at be because been before
    being below between both but by can cannot could couldn did didn do does doesn doing don down
    during each few for from further had hadn has hasn have haven having he her here hers herself
    him himself his how i if in into is isn it its itself just let me more most mustn my myself
    no nor not now of off on once only or other ought our ours ourselves out over own please same
    shan she should shouldn so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was wasn we were weren what when
    where which while who whom why will with won would wouldn you your yours yourself yourselves
    s t d ll m re ve y tell know give say said also may might must shall us
    """.split()
)

BM25_K1 = 1.2
BM25_B = 0.75


def words(text: str) -> list[str]:
    """Split text into whitespace-delimited words (the simulator's notion of a token)."""
    return text.split()


def word_count(text: str) -> int:
    """Count whitespace-delimited words: the simulator's approximate token count."""
    return len(text.split())


def _stem(word: str) -> str:
    """Strip the commonest English plural endings so 'capitals' matches 'capital'."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@lru_cache(maxsize=8192)
def terms(text: str) -> tuple[str, ...]:
    """Lower-cased, stemmed content words of ``text`` with stopwords removed."""
    return tuple(_stem(w) for w in _WORD_RE.findall(text.lower()) if w not in STOPWORDS)


def all_terms(text: str) -> tuple[str, ...]:
    """Lower-cased words of ``text`` including stopwords (fallback when a text is all stopwords)."""
    return tuple(_WORD_RE.findall(text.lower()))


@lru_cache(maxsize=4096)
def sentences(text: str) -> tuple[str, ...]:
    """Split ``text`` into whitespace-normalised sentences; very long ones are cut into pieces."""
    out: list[str] = []
    for piece in _SENTENCE_SPLIT_RE.split(text):
        piece_words = piece.split()
        for start in range(0, len(piece_words), MAX_SENTENCE_WORDS):
            out.append(" ".join(piece_words[start : start + MAX_SENTENCE_WORDS]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Passage:
    """One candidate sentence with its source priority (lower tier ranks first)."""

    text: str
    tier: int
    position: int


def rank_sentences(
    query: str, passages: Sequence[Passage], *, include_tier0_unscored: bool = True
) -> list[str]:
    """Rank passages by BM25 against ``query``; return the texts worth quoting, best first.

    A passage qualifies when it shares at least one content term with the query, or when it is in
    tier 0 (fresh tool results, which the answer must reflect even without lexical overlap).
    Ordering: tier, then BM25 score (descending), then original position; duplicates dropped.
    """
    query_terms = set(terms(query))
    docs = [terms(p.text) for p in passages]
    n_docs = len(docs)
    if n_docs == 0:
        return []
    avg_len = max(sum(len(d) for d in docs) / n_docs, 1.0)
    doc_freq: Counter[str] = Counter()
    for d in docs:
        doc_freq.update(query_terms.intersection(d))

    scored: list[tuple[int, float, int, str]] = []
    for passage, doc in zip(passages, docs, strict=True):
        score = 0.0
        if doc_freq and query_terms.intersection(doc):
            tf = Counter(t for t in doc if t in query_terms)
            norm = BM25_K1 * (1.0 - BM25_B + BM25_B * len(doc) / avg_len)
            for term, freq in tf.items():
                df = doc_freq[term]
                idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
                score += idf * freq * (BM25_K1 + 1.0) / (freq + norm)
        if score > 0.0 or (include_tier0_unscored and passage.tier == 0):
            scored.append((passage.tier, -score, passage.position, passage.text))
    scored.sort()
    seen: set[str] = set()
    ranked: list[str] = []
    for _, _, _, text in scored:
        if text not in seen:
            seen.add(text)
            ranked.append(text)
    return ranked


def passages_from(texts: Iterable[tuple[str, int]]) -> list[Passage]:
    """Turn (text, tier) pairs into sentence passages numbered in reading order."""
    out: list[Passage] = []
    for text, tier in texts:
        for sentence in sentences(text):
            out.append(Passage(sentence, tier, len(out)))
    return out
