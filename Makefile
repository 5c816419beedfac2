# The README's commands. Each installs what it needs on a fresh machine.
.PHONY: run test lint typecheck servers stop-servers bench

run:            ## the whole platform in one process, embedded backends (port 8000)
	scripts/run.sh

test:           ## install, start the real servers, lint, type check, pytest, stop
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy

servers:        ## start Kafka, FerretDB and Redis on 127.0.0.1 (idempotent)
	scripts/servers.sh start

stop-servers:
	scripts/servers.sh stop

bench:          ## every benchmark in bench/ (needs `make servers`)
	for b in bench/*_bench.py; do .venv/bin/python $$b || exit 1; done
