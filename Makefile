# The two commands a newcomer needs are `make up` and `make test` (see README.md).
.PHONY: up down status test test-unit lint schemas bench

# `make up` runs the demo (a synthetic union, an open ballot, reminders, simulated reps);
# `make up DEMO=0` starts the same system without it.
DEMO ?= 1
up:
	@scripts/bootstrap.sh
	@uv run turnout up $(if $(filter 0 no false,$(DEMO)),--no-demo,--demo)

down:
	@uv run turnout down

status:
	@uv run turnout status

test:
	@scripts/bootstrap.sh
	@uv run python -m turnout_events.compat
	@uv run pytest

test-unit:
	@scripts/bootstrap.sh
	@uv run pytest -m unit

lint:
	@uv run ruff check .
	@uv run mypy

schemas:
	@uv run python -m turnout_events.schemas write

bench:
	@scripts/bootstrap.sh
	@scripts/bench.sh
