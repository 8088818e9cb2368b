# TESSENGER. `make run-server`, `make run-client`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 5000
ATTEMPTS ?= 3
SERVER_IP ?= 127.0.0.1
UDP_PORT ?= 0
# where make run-client saves received files; {username} is the user logged in
DIR ?= received/{username}
SERVER_FLAGS ?=
CLIENT_FLAGS ?=
PYTEST_FLAGS ?=

.PHONY: run-server run-client test bench hash-password clean system-tools

run-server:
	$(PYTHON) server.py $(PORT) $(ATTEMPTS) $(SERVER_FLAGS)

run-client:
	$(PYTHON) client.py $(SERVER_IP) $(PORT) $(UDP_PORT) --receive-dir '$(DIR)' $(CLIENT_FLAGS)

# The test tools live in a virtual environment made on first use; it is remade when the
# pinned requirements change.
$(VENV)/.installed: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

# System tools some tests need (redis-server for the cluster, iptables for lossy links, the
# openssl command line for certificates). As root (CI) they are installed when missing; otherwise
# the tests that need them say so and are skipped.
SYSTEM_TOOLS = redis-server:redis-server iptables:iptables openssl:openssl tc:iproute2

system-tools:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing) >/dev/null \
	    || echo "Could not install$$missing: the tests that need them will be skipped"; \
	else echo "Not installed:$$missing (apt-get install$$missing as root): the tests that need them will be skipped"; fi

test: $(VENV)/.installed system-tools
	$(VENV)/bin/python -m pytest $(PYTEST_FLAGS)

hash-password:
	@$(PYTHON) server.py --hash-password

bench:
	$(PYTHON) -m bench $(if $(QUICK),--quick,)
	$(PYTHON) -m bench.shaped_link $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
