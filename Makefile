.PHONY: install lint test bench quickstart

install:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test]'

lint:
	.venv/bin/ruff check . && .venv/bin/mypy

test:
	.venv/bin/python -m pytest -q

bench:
	.venv/bin/python -m bench

quickstart:
	.venv/bin/python -m examples.quickstart
