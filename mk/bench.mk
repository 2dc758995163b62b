# Benchmarks: bench/cai_bench (Cai against the floor, llm-sim direct) and docs/performance.md.
# Knobs: BENCH_QUICK=1 (1-minute smoke run), BENCH_SCENARIOS=stream,idle,queue,profile,...;
# all of them: `PYTHONPATH=bench .venv/bin/python -m cai_bench --help`.
# BENCH_RETRIEVER=1 also runs the retriever's own benchmark (mk/retriever.mk: bench-retriever)
# afterwards. It is opt-in: ingesting 10k chunks on 2 cores alone takes far longer than the
# 15 minutes `make bench` is allowed.

.PHONY: bench bench-cai
bench: bench-cai ## Benchmark Cai against the floor (BENCH_QUICK=1: 1-minute smoke run); results in bench/results/
	@if [ -n "$(BENCH_RETRIEVER)" ] && $(MAKE) -s -n bench-retriever >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory bench-retriever; fi

bench-cai: install ## Cai's end-to-end benchmark only (hard limit: 15 minutes)
	PYTHONPATH=bench timeout --signal=TERM --kill-after=30 900 $(PY) -m cai_bench
