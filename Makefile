# TESSENGER. `make run-server`, `make run-client`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 5000
ATTEMPTS ?= 3
SERVER_IP ?= 127.0.0.1
UDP_PORT ?= 0
SERVER_FLAGS ?=
CLIENT_FLAGS ?=
PYTEST_FLAGS ?=

.PHONY: run-server run-client test bench hash-password clean

run-server:
	$(PYTHON) server.py $(PORT) $(ATTEMPTS) $(SERVER_FLAGS)

run-client:
	$(PYTHON) client.py $(SERVER_IP) $(PORT) $(UDP_PORT) $(CLIENT_FLAGS)

# The test tools live in a virtual environment made on first use; it is remade when the
# pinned requirements change.
$(VENV)/.installed: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_FLAGS)

hash-password:
	@$(PYTHON) server.py --hash-password

bench:
	$(PYTHON) -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
