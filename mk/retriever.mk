# Retriever (services/retriever, docs/retrieval.md): benchmark and the sample knowledge base.

ifdef BENCH_QUICK
RETRIEVER_BENCH_SIZES ?= 1000
RETRIEVER_BENCH_QUERIES ?= 50
else
RETRIEVER_BENCH_SIZES ?= 1000,10000
RETRIEVER_BENCH_QUERIES ?= 200
endif
RETRIEVER_ADDR ?= 127.0.0.1:50052
# Collection and tenant of the sample knowledge base (the defaults a fresh `make up` chats with).
INGEST_COLLECTION ?=
INGEST_TENANT ?= default

.PHONY: bench-retriever
bench-retriever: ## Retriever ingest chunks/s and search p50/p95 at 1k and 10k chunks (real model, local Qdrant) -> bench/results/retriever.jsonl
	HF_HUB_OFFLINE=1 $(PY) bench/retriever_bench.py --sizes $(RETRIEVER_BENCH_SIZES) --queries $(RETRIEVER_BENCH_QUERIES)

.PHONY: ingest-docs
ingest-docs: ## Ingest docs/ into the running retriever (waits for it to be ready)
	.venv/bin/cai ingest docs/ --addr $(RETRIEVER_ADDR) --tenant $(INGEST_TENANT) \
		$(if $(INGEST_COLLECTION),--collection $(INGEST_COLLECTION),) --wait 180
