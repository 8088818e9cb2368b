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
# TLS=0 runs the server and the client in plain TCP (unencrypted); the certificate is made
# on first use, self-signed, in TLS_DIR (git-ignored)
TLS ?= 1
TLS_DIR ?= tls
TLS_CERT = $(TLS_DIR)/cert.pem
TLS_KEY = $(TLS_DIR)/key.pem
TLS_ON = $(filter 1,$(TLS))

.PHONY: run-server run-client test bench hash-password clean system-tools

run-server: $(if $(TLS_ON),$(TLS_CERT))
	$(PYTHON) server.py $(PORT) $(ATTEMPTS) $(if $(TLS_ON),--tls-cert $(TLS_CERT) --tls-key $(TLS_KEY)) $(SERVER_FLAGS)

# the client trusts the server's certificate on first use (CLIENT_FLAGS="--tls-ca tls/cert.pem"
# verifies it against the file instead)
run-client:
	$(PYTHON) client.py $(SERVER_IP) $(PORT) $(UDP_PORT) --receive-dir '$(DIR)' $(if $(TLS_ON),--tls) $(CLIENT_FLAGS)

# A self-signed certificate for localhost and 127.0.0.1 (an EC key: the cheapest handshake)
$(TLS_CERT):
	@mkdir -p $(TLS_DIR)
	@umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
	  -subj "/CN=TESSENGER server" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(TLS_KEY) -out $(TLS_CERT) 2>/dev/null \
	  || { echo "Cannot make a TLS certificate (is the openssl command installed?); TLS=0 runs without TLS"; exit 1; }
	@echo "Made a self-signed TLS certificate: $(TLS_CERT) (key: $(TLS_KEY))"

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

# The bench's anchors: redis-server is installed first when missing and we are root.
bench:
	@$(MAKE) --no-print-directory system-tools SYSTEM_TOOLS=redis-server:redis-server
	$(PYTHON) -m bench $(if $(QUICK),--quick,)
	$(PYTHON) bench/transfer_loopback.py $(if $(QUICK),--quick,) --repeat 9
	$(PYTHON) -m bench.shaped_link $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
