"""Retrieval quality: recall@3 over a labelled set of questions about the repository's docs/.

Every Markdown file in docs/ is ingested (other files act as distractors); each question names the
file that answers it. The questions depend on docs/retrieval.md and docs/runbooks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from retriever_support import ingest, search

from cai.v1 import retriever_pb2

REPO = Path(__file__).resolve().parents[3]
EVAL_SET = Path(__file__).parent / "data" / "eval_docs.jsonl"


async def test_recall_at_3_on_docs(stub) -> None:
    cases = [json.loads(line) for line in EVAL_SET.read_text().splitlines() if line.strip()]
    assert len(cases) >= 30
    for source in {c["source"] for c in cases}:
        assert (REPO / source).is_file(), f"{source} is gone: update {EVAL_SET.name}"

    files = sorted((REPO / "docs").glob("*.md"))
    documents = [
        retriever_pb2.Document(
            document_id=f.relative_to(REPO).as_posix(),
            source=f.relative_to(REPO).as_posix(),
            content_type="text/markdown",
            text=f.read_text(),
        )
        for f in files
    ]
    summary = await ingest(stub, "eval", documents, collection="eval")
    assert list(summary.errors) == []

    misses = []
    for case in cases:
        passages = await search(stub, "eval", case["question"], k=3, collection="eval")
        sources = [p.source for p in passages]
        if case["source"] not in sources:
            misses.append(f"{case['question']!r}: wanted {case['source']}, got {sources}")
    recall = 1 - len(misses) / len(cases)
    print(
        f"recall@3 = {recall:.3f} over {len(cases)} questions, {len(files)} files; misses: {misses}"
    )
    assert recall >= 0.9, f"recall@3 = {recall:.2f}; misses:\n" + "\n".join(misses)
