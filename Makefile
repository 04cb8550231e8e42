# qubes-logvm: the one place that knows commands and install paths.
#
#   make test    every test (installs what it needs: Debian packages, .venv)
#   make test-fast  the in-process tests only (seconds)
#   make demo    the main job, end to end
#   make bench   the benchmark (figures next to baselines from the same run)

SHELL := /bin/bash
PYTHON_SYS ?= /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Each checkout its own pytest base directory, so that parallel runs from
# two checkouts never share (and wipe) /tmp/pytest-of-root. Short: Unix
# socket paths under it are limited to 108 bytes.
BASETEMP ?= /tmp/pytest-logvm-$(shell printf %s "$(CURDIR)" | md5sum | cut -c1-8)

# Debian packages: runtime dependencies (as the products use them) and the
# real tools the tests drive.
APT_RUNTIME := python3 python3-venv python3-systemd python3-yaml python3-zstandard python3-gi python3-gi-cairo gir1.2-gtk-3.0
APT_TEST := systemd zstd util-linux rsyslog procps groff-base less tmux lnav zsh systemd-journal-remote xvfb xauth
# logvm-forward's tests: a central rsyslog with TLS, certificates made by openssl.
APT_TEST += rsyslog-gnutls openssl
# Fault tests: a wall clock stepped under a real collector.
APT_TEST += faketime
APT_BUILD := build-essential rpm debhelper dpkg-dev fakeroot lintian rpmlint dh-python python3-pip python3-setuptools python3-wheel
APT_PACKAGES := $(APT_RUNTIME) $(APT_TEST) $(APT_BUILD)

.PHONY: all deps venv lint typecheck pytest test test-fast demo bench clean

all: test

deps: $(VENV)/.deps-stamp
$(VENV)/.deps-stamp: Makefile
	./scripts/install-deps $(APT_PACKAGES)
	@mkdir -p $(VENV) && touch $@

# The venv sees the distro's python3-systemd/yaml/zstandard exactly as the
# installed product will; test tools go into the venv only.
venv: $(VENV)/.venv-stamp
$(VENV)/.venv-stamp: $(VENV)/.deps-stamp requirements-dev.txt python/pyproject.toml
	$(PYTHON_SYS) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps -e python
	# The checkout as a plain path entry, ahead of the system dist-packages: a
	# qubes-logvm .deb installed by the packaging tests must never shadow it
	# (the editable install's import finder only runs after dist-packages).
	echo "$(CURDIR)/python" > "$$($(VPY) -c 'import site; print(site.getsitepackages()[0])')/qubes-logvm-checkout.pth"
	touch $@

lint: venv
	$(VENV)/bin/ruff check python tests bench demo salt/_modules
	$(VENV)/bin/ruff format --check python tests bench demo salt/_modules

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(VENV)/bin/pytest --basetemp=$(BASETEMP) $(PYTEST_ARGS)

test: lint typecheck pytest

# The in-process tier (pytest -m inprocess): no subprocess, no namespace,
# done in seconds. `make test` still runs everything.
test-fast: venv
	$(VENV)/bin/pytest --basetemp=$(BASETEMP) -q -m inprocess $(PYTEST_ARGS)

demo: venv
	$(VPY) -m demo.run

bench: venv
	$(VPY) -m bench.run

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache

# ===========================================================================
# Install and packages: install-vm, install-dom0, rpm, deb.
# The only place that knows install paths; rpm_spec/*.spec.in and
# debian/rules call install-vm / install-dom0 with DESTDIR (and, on Debian,
# UNITDIR/PRESETDIR for bookworm's /lib/systemd layout).
# ===========================================================================
DESTDIR ?=
PREFIX ?= /usr
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
PRESETDIR ?= $(PREFIX)/lib/systemd/system-preset
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
BINDDIRSDIR ?= $(PREFIX)/lib/qubes-bind-dirs.d
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# Fedora's zsh reads site-functions; Debian's vendor-completions (debian/rules).
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
# lnav reads every format under /etc/lnav/formats/*/ (docs/reading.md).
LNAVFORMATDIR ?= $(SYSCONFDIR)/lnav/formats/qubes-logvm
DATADIR ?= $(PREFIX)/share
QUBESRPCDIR ?= $(SYSCONFDIR)/qubes-rpc
RPCCONFIGDIR ?= $(SYSCONFDIR)/qubes/rpc-config
POLICYDIR ?= $(SYSCONFDIR)/qubes/policy.d
CONFDIR ?= $(SYSCONFDIR)/qubes-logvm
FORMULADIR ?= /srv/formulas/base/logvm-formula
SALTMINIONDIR ?= $(SYSCONFDIR)/salt/minion.d
# The witness's append-only state in dom0 (logvm-witness's default root).
WITNESSDIR ?= /var/lib/qubes-logvm-witness
PYTHON ?= /usr/bin/python3
# Where the collector's socket lives (systemd/logvm-collector.socket) and
# so where /etc/qubes-rpc/logvm.Send points.
LOGVM_SOCKET := /run/qubes-logvm/logvm.Send.sock
# The interpreter's own purelib for PREFIX: Debian's deb_system scheme
# (/usr/lib/python3/dist-packages) where it exists, posix_prefix elsewhere
# (Fedora: /usr/lib/python3.X/site-packages, i.e. %{python3_sitelib}).
# PIP_SITELIB is where pip puts it for $(PYTHON); a different PYTHON_SITELIB
# (an RPM for Fedora built here, see `rpm`) moves it there.
PIP_SITELIB := $(shell $(PYTHON) -c 'import sysconfig as s; n = "deb_system" if "deb_system" in s.get_scheme_names() else "posix_prefix"; print(s.get_path("purelib", n, {"base": "$(PREFIX)", "platbase": "$(PREFIX)"}))')
PYTHON_SITELIB ?= $(PIP_SITELIB)
VERSION := $(shell cat version)
PKGBUILD := build/pkg
# Manual pages, installed plain: dh_compress (Debian) and brp-compress (RPM)
# gzip them as each distribution does.
MAN1 := man/logvm.1 man/logvm-send.1 man/logvm-browser.1
MAN8 := man/logvm-collector.8 man/logvm-exporter.8 man/logvm-rotate.8 man/logvm-witness.8 \
	man/logvm-forward.8
D := $(DESTDIR)

.PHONY: install-python install-vm install-dom0 rpm deb srpm-tarball

# The Python package and its console scripts, the standard way (what
# Fedora's %pyproject_install does too): pip with --root/--prefix, no
# dependencies (they are distro packages), no network, no build isolation.
# Built from a copy so that the source tree (and the developers' editable
# install) is never touched.
install-python:
	rm -rf $(PKGBUILD)/pysrc && mkdir -p $(PKGBUILD)/pysrc
	cp -r python/pyproject.toml python/qubes_logvm $(PKGBUILD)/pysrc/
	find $(PKGBUILD)/pysrc -name __pycache__ -prune -exec rm -rf {} +
	DEB_PYTHON_INSTALL_LAYOUT=deb_system $(PYTHON) -m pip install --quiet --no-deps \
	    --no-build-isolation --no-index --no-cache-dir --disable-pip-version-check \
	    --no-warn-script-location --no-compile --ignore-installed --root-user-action=ignore \
	    --root "$(if $(D),$(abspath $(D)),/)" --prefix $(PREFIX) $(PKGBUILD)/pysrc
	# direct_url.json records the build path; REQUESTED is pip bookkeeping.
	if [ "$(PIP_SITELIB)" != "$(PYTHON_SITELIB)" ]; then \
	    mkdir -p $(D)$(PYTHON_SITELIB) && \
	    mv $(D)$(PIP_SITELIB)/qubes_logvm $(D)$(PIP_SITELIB)/qubes_logvm-*.dist-info \
	        $(D)$(PYTHON_SITELIB)/ && \
	    rmdir $(D)$(PIP_SITELIB) && rmdir $(D)$(dir $(PIP_SITELIB)) 2>/dev/null || true; \
	fi
	rm -f $(D)$(PYTHON_SITELIB)/qubes_logvm-*.dist-info/direct_url.json \
	      $(D)$(PYTHON_SITELIB)/qubes_logvm-*.dist-info/REQUESTED
	rm -rf $(PKGBUILD)/pysrc

# VM side (templates, the LogVM, source qubes): all programs and their
# manual pages, units, the logvm.Send socket service, bind-dirs, default configs.
install-vm: install-python
	install -d $(D)$(UNITDIR) $(D)$(PRESETDIR) $(D)$(TMPFILESDIR) $(D)$(SYSUSERSDIR) \
	    $(D)$(BINDDIRSDIR) $(D)$(QUBESRPCDIR) $(D)$(RPCCONFIGDIR) $(D)$(CONFDIR)
	install -m 0644 systemd/logvm-collector.socket systemd/logvm-collector.service \
	    systemd/logvm-rotate.service systemd/logvm-exporter.service \
	    systemd/logvm-forward.service $(D)$(UNITDIR)/
	install -m 0644 systemd/75-qubes-logvm.preset $(D)$(PRESETDIR)/75-qubes-logvm.preset
	install -m 0644 systemd/qubes-logvm.tmpfiles $(D)$(TMPFILESDIR)/qubes-logvm.conf
	install -m 0644 systemd/qubes-logvm.sysusers $(D)$(SYSUSERSDIR)/qubes-logvm.conf
	install -m 0644 bind-dirs/40_qubes-logvm.conf $(D)$(BINDDIRSDIR)/40_qubes-logvm.conf
	ln -sfn $(LOGVM_SOCKET) $(D)$(QUBESRPCDIR)/logvm.Send
	install -m 0755 qubes-rpc/logvm.Witness.vm $(D)$(QUBESRPCDIR)/logvm.Witness
	install -m 0644 rpc-config/logvm.Send $(D)$(RPCCONFIGDIR)/logvm.Send
	# Outside verification: the LogVM's export, the DispVM's verifier end.
	install -m 0755 qubes-rpc/logvm.Export qubes-rpc/logvm.VerifySnapshot $(D)$(QUBESRPCDIR)/
	install -m 0644 rpc-config/logvm.Export $(D)$(RPCCONFIGDIR)/logvm.Export
	install -m 0644 etc/qubes-logvm/collector.yaml etc/qubes-logvm/exporter.yaml \
	    etc/qubes-logvm/forward.yaml $(D)$(CONFDIR)/
	install -d $(D)$(MANDIR)/man1 $(D)$(MANDIR)/man8
	install -m 0644 $(MAN1) $(D)$(MANDIR)/man1/
	install -m 0644 $(MAN8) $(D)$(MANDIR)/man8/
	# Reading: shell completion for logvm, the lnav format for segments.
	install -D -m 0644 completion/logvm.bash $(D)$(BASHCOMPDIR)/logvm
	install -D -m 0644 completion/_logvm $(D)$(ZSHCOMPDIR)/_logvm
	install -D -m 0644 lnav/qubes_logvm.json $(D)$(LNAVFORMATDIR)/qubes_logvm.json
	# logvm-browser in the LogVM's app menu (Salt sets its menu-items feature).
	install -D -m 0644 desktop/logvm-browser.desktop $(D)$(DATADIR)/applications/logvm-browser.desktop
	install -D -m 0644 desktop/logvm-browser.svg $(D)$(DATADIR)/icons/hicolor/scalable/apps/logvm-browser.svg

# dom0 side: the witness service and dom0's exporter (only the pure core,
# the witness, the exporter with the config schema it reads and the daemon
# helpers, their commands and manual pages: code in dom0 stays small, and no
# store or zstd), the exporter's unit, the policy, the Salt formula.
DOM0_MODULES := __init__.py VERSION py.typed core witness exporter daemon_support.py \
	config/__init__.py config/schema.py
install-dom0:
	rm -rf $(PKGBUILD)/dom0root
	$(MAKE) --no-print-directory install-python DESTDIR=$(PKGBUILD)/dom0root
	install -d $(D)$(PYTHON_SITELIB)/qubes_logvm $(D)$(BINDIR) $(D)$(QUBESRPCDIR) \
	    $(D)$(POLICYDIR) $(D)$(FORMULADIR) $(D)$(SALTMINIONDIR) $(D)$(UNITDIR)
	cd $(PKGBUILD)/dom0root$(PYTHON_SITELIB)/qubes_logvm && \
	    cp -r --parents $(DOM0_MODULES) $(abspath $(D)$(PYTHON_SITELIB))/qubes_logvm/
	install -m 0755 $(PKGBUILD)/dom0root$(BINDIR)/logvm-witness \
	    $(PKGBUILD)/dom0root$(BINDIR)/logvm-exporter $(D)$(BINDIR)/
	install -d $(D)$(MANDIR)/man8
	install -m 0644 man/logvm-witness.8 man/logvm-exporter.8 $(D)$(MANDIR)/man8/
	install -m 0644 systemd/logvm-exporter-dom0.service $(D)$(UNITDIR)/
	rm -rf $(PKGBUILD)/dom0root
	install -m 0755 qubes-rpc/logvm.Witness $(D)$(QUBESRPCDIR)/logvm.Witness
	# Outside verification on a timer: user units of the dom0 user.
	install -d $(D)$(USERUNITDIR)
	install -m 0644 systemd/user/logvm-witness-verify.service \
	    systemd/user/logvm-witness-verify.timer $(D)$(USERUNITDIR)/
	# dom0's qrexec services run as the dom0 user, a member of group qubes.
	install -d -m 0770 $(D)$(WITNESSDIR)
	install -m 0664 qubes-rpc-policy/*.policy $(D)$(POLICYDIR)/
	cd salt && find . -type d -name __pycache__ -prune -o -type f -print | while read -r f; do \
	    install -D -m 0644 "$$f" "$(abspath $(D)$(FORMULADIR))/$${f#./}"; done
	printf '%s\n' '# qubes-logvm: makes the logvm formula visible to qubesctl.' \
	    'file_roots:' '  base:' '    - $(FORMULADIR)' > $(D)$(SALTMINIONDIR)/logvm.conf
	chmod 0644 $(D)$(SALTMINIONDIR)/logvm.conf

# A source tarball as qubes-builder v2 makes it (NAME-VERSION/ prefix), from
# the working tree so that uncommitted changes are tested too: in a git
# checkout every file git does not ignore, elsewhere (an unpacked tarball)
# the whole tree.
srpm-tarball:
	mkdir -p $(PKGBUILD)/rpmbuild/SOURCES
	out=$(abspath $(PKGBUILD)/rpmbuild/SOURCES/qubes-logvm-$(VERSION).tar.gz); \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -z --cached | \
	        tar --null --ignore-failed-read -T - --transform 's,^,qubes-logvm-$(VERSION)/,' -czf "$$out"; \
	else \
	    tar --exclude=./build --exclude=./dist --exclude=__pycache__ \
	        --transform 's,^\.,qubes-logvm-$(VERSION),' -czf "$$out" .; \
	fi

# The Fedora Python each RPM is for (its %{python3_sitelib} and python(abi)):
# dom0 of Qubes R4.2 is Fedora 37 (python3.11), of R4.3 Fedora 41
# (python3.13); the VM RPM follows your Fedora templates (Fedora 41: 3.13).
# `make rpm QUBES_RELEASE=4.2` builds the dom0 RPM for R4.2.
QUBES_RELEASE ?= 4.3
RPM_DOM0_PYTHON ?= $(if $(filter 4.2,$(QUBES_RELEASE)),3.11,3.13)
RPM_VM_PYTHON ?= 3.13

# Both RPMs with Debian's rpmbuild (--nodeps: the build dependencies are
# Debian packages here, not in the rpm database); the Fedora macros it lacks come from
# rpm_spec/macros.qubes-logvm (on Fedora/Qubes the real ones are used).
rpm: srpm-tarball
	mkdir -p $(PKGBUILD)/rpmbuild/SPECS
	for s in qubes-logvm:$(RPM_VM_PYTHON) qubes-logvm-dom0:$(RPM_DOM0_PYTHON); do \
	    py=$${s#*:}; s=$${s%:*}; \
	    sed -e 's/@VERSION@/$(VERSION)/g' \
	        -e "s/@CHANGELOG@/* $$(LC_ALL=C date -u +'%a %b %d %Y') qubes-logvm developers <qubes-logvm@example.org> - $(VERSION)-1\n- Local build (qubes-builder fills the changelog from git)/" \
	        rpm_spec/$$s.spec.in > $(PKGBUILD)/rpmbuild/SPECS/$$s.spec || exit 1; \
	    rpmbuild --quiet -bb --nodeps --load rpm_spec/macros.qubes-logvm \
	        --define '_topdir $(abspath $(PKGBUILD)/rpmbuild)' \
	        --define "python3_sitelib /usr/lib/python$$py/site-packages" \
	        --define "python3_version $$py" \
	        $(PKGBUILD)/rpmbuild/SPECS/$$s.spec || exit 1; \
	done
	mkdir -p dist && cp $(PKGBUILD)/rpmbuild/RPMS/noarch/*.rpm dist/

# The Debian package (binary only, unsigned); lands in dist/.
deb:
	dpkg-buildpackage -us -uc -b
	mkdir -p dist && mv ../qubes-logvm_$(VERSION)*.deb dist/ && \
	    rm -f ../qubes-logvm_$(VERSION)*.buildinfo ../qubes-logvm_$(VERSION)*.changes
