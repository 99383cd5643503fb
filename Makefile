# The two commands a newcomer needs are `make up` and `make test` (see README.md).
.PHONY: up down status test test-unit lint schemas bench

up:
	@scripts/bootstrap.sh
	@uv run turnout up

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

schemas:
	@uv run python -m turnout_events.schemas write

bench:
	@scripts/bootstrap.sh
	@uv run python bench/relay_throughput.py
