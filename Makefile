# The two entry points of the README. Both set everything up first (idempotent, cached).
.PHONY: setup demo test lint bench wheelhouse

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/tablesync demo

test: setup
	.venv/bin/ruff check kcl_app tablesync_local tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports
	.venv/bin/pytest -q -n 2 --dist worksteal

bench: setup
	.venv/bin/python bench/apply.py

# The fleet release (infra/worker.yaml ReleaseArtifact): wheels + lock with hashes, for upload to S3.
wheelhouse: setup
	bash scripts/wheelhouse.sh
