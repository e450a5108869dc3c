# The two commands: `make run` opens the app, `make test` runs the linters and the whole suite
# (`make lint`: ruff and the import contracts in .importlinter only).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501
HOST ?= 127.0.0.1
# The suite runs on three processes (pytest-xdist), one more than the 2-core CI machine has cores: much of it
# waits on browsers, app servers and job workers. Measured on 2 cores: 1257 s on two processes, 1086 s on three.
# --dist loadscope keeps each test module on one process, so a module's fixtures (grids of runs, servers,
# reports) are built once, not once per process.
PYTEST_ARGS ?= -n 3 --dist loadscope

.PHONY: run lint test clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# The Host names the app accepts: the loopback names (.streamlit/config.toml), plus HOST, or for HOST=0.0.0.0
# this machine's name and addresses, plus any names in ALLOWED_HOSTS (e.g. a proxy's: ALLOWED_HOSTS="lab.example").
run: $(VENV)/.installed
	@case "$(HOST)" in 127.0.0.1|localhost|::1) ;; *) [ -n "$$SIMLAB_PASSWORD" ] || { \
	  echo "make run HOST=$(HOST) serves simlab to other machines: set SIMLAB_PASSWORD first." >&2; exit 2; } ;; esac
	@case "$(HOST)" in 127.0.0.1|localhost|::1) extra="" ;; \
	  0.0.0.0|::) extra="$$(hostname 2>/dev/null) $$(hostname -f 2>/dev/null) $$(hostname -I 2>/dev/null)" ;; \
	  *) extra="$(HOST)" ;; esac; extra="$$extra $(ALLOWED_HOSTS)"; hosts=""; \
	set -- $$extra; [ $$# -eq 0 ] || for h in localhost 127.0.0.1 ::1 "$$@"; do hosts="$$hosts --server.allowedHosts $$h"; done; \
	set -x; SIMLAB_DATASET=demo exec $(BIN)/streamlit run app.py --server.address $(HOST) --server.port $(PORT) \
	  --browser.gatherUsageStats false $$hosts

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-cache:
	rm -rf cache/vectors cache/thumbs cache/simlab.db*
