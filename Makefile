# The virtualenv lives at .venv; `.venv/bin/ingest` is the console script.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install lint typecheck test test-fast run bench clean faults soak docs reference system-packages docs reference

all: install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ingest tests tools examples clients conftest.py
	$(BIN)/ruff format --check ingest tests tools examples clients conftest.py

typecheck: $(STAMP)
	$(BIN)/mypy

# Every tier: tests/unit, tests/integration, tests/system and the light
# client's clients/python/tests (pyproject's testpaths; tests/tiers.py);
# and the docs site, so a broken link fails CI.
test: lint typecheck docs system-packages
	$(BIN)/pytest -q

# The docs site in site/: MkDocs with --strict (mkdocs.yml), so a broken link
# or a page missing from the navigation fails; first a check that the
# generated pages (docs/reference/, docs/performance.md, docs/ingest.1) are
# what `make reference` writes.
docs: $(STAMP)
	$(BIN)/python -m tools.docs --check
	$(BIN)/mkdocs build --strict --quiet

# Rewrite the generated pages from the code (the Option table, the metrics
# collector, the vocabulary, the argument parser) and docs/bench.json.
reference: $(STAMP)
	$(BIN)/python -m tools.docs

# Servers the system tier runs unmodified (tests/system/test_emitters.py runs
# the guides' nginx, HAProxy and rsyslog files): Debian's packages, pinned to
# the release series the tests were written against, installed when missing
# and this user may (root, apt-get). Elsewhere those tests skip, saying which
# program is missing.
SYSTEM_PACKAGES := nginx=1.22.* haproxy=2.6.* rsyslog=8.2302.*
system-packages:
	@if [ -x /usr/sbin/nginx ] && [ -x /usr/sbin/haproxy ] && [ -x /usr/sbin/rsyslogd ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; } \
	  || echo "warning: could not install $(SYSTEM_PACKAGES); their tests will skip"; \
	else echo "note: nginx, haproxy or rsyslog missing; their tests will skip"; fi

# The unit tier alone, in well under a minute: no sockets, no processes, no
# emulator. The loop to run while changing a parser, a codec, the config.
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Development run: starts the real emulator in the background unless
# PUBSUB_EMULATOR_HOST is set, creates the topic, serves on dev defaults.
run: $(STAMP)
	$(BIN)/python -m tools.dev.devrun

# The fault-injection suite alone (part of `make test` too): real emulator,
# TCP proxy, SIGSTOP/SIGKILL/SIGTERM, the disk spool, restarts during replay,
# a hostile spool directory, amplification floods.
faults: $(STAMP)
	$(BIN)/pytest -q tests/system/test_faults.py tests/integration/test_spool_hostile.py tests/system/test_flood.py

# ~60 s of steady load with the emulator frozen every 15 s: zero loss, flat RSS.
soak: $(STAMP)
	$(BIN)/python -m tools.dev.soak

# Every benchmark, one command: the suites of tools/bench (`python -m
# tools.bench list`), each at its defaults, their figures written to
# bench.json (machine facts included, so a later run can be compared).
# One suite, with its own flags: `python -m tools.bench SUITE --help`.
bench: $(STAMP)
	$(BIN)/python -m tools.bench all --json bench.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build site *.egg-info

# ---------------------------------------------------------------------------
# System install (operators; never run by tests or CI). `install` above is the
# development virtualenv, which `make` builds by default, so the system
# install has its own name:
#   sudo make install-system                  # /usr/local + /etc
#   make install-system DESTDIR=/tmp/stage    # staged, for packaging
# ingest and its dependencies go into their own virtualenv, $(SYS_LIBDIR), so
# they never touch the system Python (Debian's is externally managed, PEP
# 668); $(SYS_BINDIR)/ingest is a symlink to its console script. The units
# name /usr/local/bin/ingest; another PREFIX is substituted while copying.
# The configuration file is installed only if none exists; the sysctl drop-in
# is copied, not applied (run `sysctl --system`).
PREFIX ?= /usr/local
DESTDIR ?=
SYS_LIBDIR := $(PREFIX)/lib/ingest
SYS_BINDIR := $(PREFIX)/bin
UNITDIR ?= /etc/systemd/system
SYSCTLDIR ?= /etc/sysctl.d
CONFDIR ?= /etc/ingest
MANDIR ?= $(PREFIX)/share/man

.PHONY: install-system uninstall-system

install-system:
	$(PYTHON) -m venv $(DESTDIR)$(SYS_LIBDIR)
	$(DESTDIR)$(SYS_LIBDIR)/bin/pip install --quiet .
	@# A staged venv must name its final home in its scripts' #! lines.
	if [ -n "$(DESTDIR)" ]; then \
	  grep -rlI -- "$(DESTDIR)$(SYS_LIBDIR)" $(DESTDIR)$(SYS_LIBDIR)/bin $(DESTDIR)$(SYS_LIBDIR)/pyvenv.cfg \
	    | xargs -r sed -i "s|$(DESTDIR)$(SYS_LIBDIR)|$(SYS_LIBDIR)|g"; fi
	install -m 0644 README.md $(DESTDIR)$(SYS_LIBDIR)/README.md
	install -D -m 0644 docs/ingest.1 $(DESTDIR)$(MANDIR)/man1/ingest.1
	install -d $(DESTDIR)$(SYS_BINDIR)
	ln -sfn $(SYS_LIBDIR)/bin/ingest $(DESTDIR)$(SYS_BINDIR)/ingest
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCTLDIR) $(DESTDIR)$(CONFDIR)
	for unit in ingest.service ingest.socket; do \
	  sed -e "s|/usr/local/bin/ingest|$(SYS_BINDIR)/ingest|g" \
	      -e "s|/usr/local/lib/ingest|$(SYS_LIBDIR)|g" systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit; \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit; done
	install -m 0644 systemd/99-ingest.conf $(DESTDIR)$(SYSCTLDIR)/99-ingest.conf
	[ -e $(DESTDIR)$(CONFDIR)/ingest.toml ] || install -m 0644 systemd/ingest.toml $(DESTDIR)$(CONFDIR)/ingest.toml
	@echo "installed. Next: edit $(CONFDIR)/ingest.toml; sysctl --system;"
	@echo "  systemctl daemon-reload && systemctl enable --now ingest.socket ingest.service"

uninstall-system:
	rm -f $(DESTDIR)$(UNITDIR)/ingest.service $(DESTDIR)$(UNITDIR)/ingest.socket
	rm -f $(DESTDIR)$(SYSCTLDIR)/99-ingest.conf $(DESTDIR)$(SYS_BINDIR)/ingest
	rm -rf $(DESTDIR)$(SYS_LIBDIR)
	rm -f $(DESTDIR)$(MANDIR)/man1/ingest.1
	@echo "kept $(CONFDIR)/ingest.toml"
