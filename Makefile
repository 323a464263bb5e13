# Verbs for the project. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup setup-dev run stop test lint archive bench

setup:
	scripts/setup.sh serve

setup-dev:
	scripts/setup.sh dev

test: setup-dev
	$(PY) -m pytest

lint: setup-dev
	.venv/bin/ruff check handlers frontend scripts tests
