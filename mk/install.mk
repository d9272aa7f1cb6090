# Installation on a VM, and the Debian package; included by GNUmakefile.
#
#   make install   [PREFIX=/usr/local] [DESTDIR=]  binaries, man pages, systemd
#                  units, /etc/ebpf-monitor/ (kept when present), docs
#   make uninstall [PREFIX=/usr/local] [DESTDIR=]  removes them again; the
#                  configuration only when unchanged
#   make deb       $(BUILD)/ebpf-monitor_<version>_<arch>.deb: dpkg-deb over a
#                  staged `make install PREFIX=/usr`, Depends from dpkg-shlibdeps
#
# The units (images/systemd/*.service.in) get the installed paths here. When
# installing into the running system, systemd is told to reload its units;
# nothing is enabled or started.
#
# The embedded API description and web page: pkg/openapi.c pulls
# docs/openapi.json in with .incbin, pkg/ui.c the files of pkg/ui/; the
# compiler's dependency files do not record either.

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/ebpf-monitor
SYSCONFDIR ?= /etc
# Debian 12 packages ship units in /lib/systemd/system; /usr/local/lib/systemd/system
# is on systemd's search path for everything else.
UNITDIR    ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
HELP2MAN   ?= help2man

UNITS      := ebpf-agent.service ebpf-aggregator.service
UNIT_FILES := $(addprefix $(BUILD)/systemd/,$(UNITS))
MAN_PAGES  := $(BUILD)/man/ebpf-agent.8 $(BUILD)/man/ebpf-aggregator.8
CONF_FILES := agent.yaml aggregator.yaml agent.env aggregator.env
DOC_FILES  := README.md docs/openapi.json $(wildcard docs/grafana/*.json docs/prometheus/*.rules.yml)
# What README.md links to, kept at the same relative paths beside it so its links work there.
DOC_TREE   := CONTRIBUTING.md pkg/events.proto $(wildcard docs/*.md docs/*.png) docs/openapi.json \
              $(wildcard docs/grafana/*.json docs/prometheus/*.rules.yml)

# Debian versions start with a digit: v1.2-3-gabc -> 1.2+3+gabc, abc123 -> 0.0~gitabc123.
DEB_VERSION := $(shell echo '$(VERSION)' | sed -e 's/^v//' -e 's/-/+/g' -e '/^[0-9][0-9]*\./!s/^/0.0~git/')
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null)
DEB         := $(BUILD)/ebpf-monitor_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_TREE    := $(BUILD)/deb

.PHONY: install uninstall deb FORCE

$(BUILD)/pkg/openapi.o: docs/openapi.json
$(FUZZ_BUILD)/pkg/openapi.o: docs/openapi.json
$(BUILD)/pkg/ui.o $(FUZZ_BUILD)/pkg/ui.o: $(wildcard pkg/ui/*)
# The page's files gzipped once at build time (-n: no name or time stamp, so the
# bytes depend on the content only); pkg/ui.c embeds both forms. The embedded
# index.html is pkg/ui/index.html naming app.js and app.css with ?v=<the first
# 16 hex digits of their SHA-256> (their ETag), so a browser may keep them for
# good: another content is another URL.
UI_GEN := $(BUILD)/gen/ui
UI_GZ  := $(patsubst pkg/ui/%,$(UI_GEN)/%.gz,$(wildcard pkg/ui/*))
$(UI_GEN)/index.html: pkg/ui/index.html pkg/ui/app.js pkg/ui/app.css
	@mkdir -p $(@D)
	sed -e "s|\"ui/app.js\"|\"ui/app.js?v=$$(sha256sum pkg/ui/app.js | cut -c1-16)\"|" \
	    -e "s|\"ui/app.css\"|\"ui/app.css?v=$$(sha256sum pkg/ui/app.css | cut -c1-16)\"|" $< > $@.tmp
	mv -f $@.tmp $@
$(UI_GEN)/index.html.gz: $(UI_GEN)/index.html
	gzip -9 -n -c $< > $@.tmp && mv -f $@.tmp $@
$(UI_GEN)/%.gz: pkg/ui/%
	@mkdir -p $(@D)
	gzip -9 -n -c $< > $@.tmp && mv -f $@.tmp $@
$(BUILD)/pkg/ui.o $(FUZZ_BUILD)/pkg/ui.o: $(UI_GZ) $(UI_GEN)/index.html
$(BUILD)/pkg/ui.o: CFLAGS += -DUI_GEN_DIR='"$(UI_GEN)/"'
$(FUZZ_BUILD)/pkg/ui.o: FUZZ_CFLAGS += -DUI_GEN_DIR='"$(UI_GEN)/"'

# tests/test_e2e_install.c runs make install and make deb on its own build
# (SANITIZE=1 builds test bin-asan's binaries, and must not rebuild bin/).
$(BUILD)/tests/test_e2e_install.o: CFLAGS += \
    -DINSTALL_MAKE_ARGS='"SANITIZE=$(SANITIZE) BUILD=$(BUILD) BIN=$(BIN)"'

# Rebuilt when the install paths change, so a unit never names another prefix.
$(BUILD)/systemd/%.service: images/systemd/%.service.in FORCE
	@mkdir -p $(@D)
	@sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' $< > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; echo "  UNIT $@"; fi

$(BUILD)/man/%.8: $(BIN)/%
	@mkdir -p $(@D)
	$(HELP2MAN) --no-info --section=8 --source=ebpf-monitor --version-string='$(VERSION)' \
	    --name="$(if $(filter ebpf-agent,$*),eBPF event agent,cluster-wide event aggregator)" \
	    $(if $(filter ebpf-aggregator,$*),--include=$(BUILD)/man/ebpf-aggregator.h2m) \
	    --output=$@ $<

# The aggregator's subcommands, each a section of its page with its own --help, as printed
# (roff's escape character and control characters at a line's start made plain text).
MAN_TEXT := sed -e 's/\\/\\e/g' -e "s/^[.']/\\\\\&&/"
$(BUILD)/man/ebpf-aggregator.8: $(BUILD)/man/ebpf-aggregator.h2m
$(BUILD)/man/ebpf-aggregator.h2m: $(BIN)/ebpf-aggregator
	@mkdir -p $(@D)
	@{ echo '[TAIL]'; echo '.nf'; $< tail --help | $(MAN_TEXT); echo '.fi'; \
	   echo '[DECODE]'; echo '.nf'; $< decode --help | $(MAN_TEXT); echo '.fi'; } > $@.tmp
	@mv -f $@.tmp $@

FORCE:

install: build $(UNIT_FILES) $(MAN_PAGES)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man8 \
	    $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/ebpf-monitor
	install -m 0755 $(BIN)/ebpf-agent $(BIN)/ebpf-aggregator $(DESTDIR)$(BINDIR)/
	ln -sf ebpf-agent $(DESTDIR)$(BINDIR)/ebpf-server
	install -m 0644 $(UNIT_FILES) $(DESTDIR)$(UNITDIR)/
	install -m 0644 $(MAN_PAGES) $(DESTDIR)$(MANDIR)/man8/
	echo '.so man8/ebpf-agent.8' > $(DESTDIR)$(MANDIR)/man8/ebpf-server.8
	install -m 0644 $(DOC_FILES) $(DESTDIR)$(DOCDIR)/
	for f in $(DOC_TREE); do install -D -m 0644 "$$f" "$(DESTDIR)$(DOCDIR)/$$f"; done
	@# The configuration is the operator's once installed: never overwritten.
	@# The .env files may hold secrets and stay root's.
	@for f in $(CONF_FILES); do \
	    dst=$(DESTDIR)$(SYSCONFDIR)/ebpf-monitor/$$f; \
	    mode=0644; case $$f in *.env) mode=0600 ;; esac; \
	    if [ -e "$$dst" ]; then echo "  keeping $$dst"; \
	    else install -m $$mode images/systemd/$$f "$$dst" && echo "  installed $$dst"; fi; \
	done
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

uninstall:
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then \
	    systemctl disable --now $(UNITS) 2>/dev/null || true; fi
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,ebpf-agent ebpf-aggregator ebpf-server) \
	    $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS)) \
	    $(addprefix $(DESTDIR)$(MANDIR)/man8/,ebpf-agent.8 ebpf-aggregator.8 ebpf-server.8)
	rm -rf $(DESTDIR)$(DOCDIR)
	@for f in $(CONF_FILES); do \
	    dst=$(DESTDIR)$(SYSCONFDIR)/ebpf-monitor/$$f; \
	    if cmp -s images/systemd/$$f "$$dst"; then rm -f "$$dst"; \
	    elif [ -e "$$dst" ]; then echo "  keeping $$dst (changed)"; fi; \
	done
	@rmdir $(DESTDIR)$(SYSCONFDIR)/ebpf-monitor 2>/dev/null || true
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# The package tree is staged from scratch each time. dpkg-shlibdeps wants a
# debian/control beside the tree it reads.
deb: build
	rm -rf $(DEB_TREE)
	+$(SUBMAKE) install PREFIX=/usr DESTDIR=$(abspath $(DEB_TREE))/debian/ebpf-monitor
	@set -e; root=$(DEB_TREE)/debian/ebpf-monitor; \
	gzip -9n $$root/usr/share/man/man8/*.8; \
	install -d $$root/DEBIAN; \
	install -m 0644 images/deb/control.in $(DEB_TREE)/debian/control; \
	(cd $(DEB_TREE) && dpkg-shlibdeps -O debian/ebpf-monitor/usr/bin/ebpf-agent \
	    debian/ebpf-monitor/usr/bin/ebpf-aggregator) > $(DEB_TREE)/substvars; \
	depends=$$(sed -n 's/^shlibs:Depends=//p' $(DEB_TREE)/substvars); \
	size=$$(du -sk --exclude=DEBIAN $$root | cut -f1); \
	sed -n '/^Package:/,$$p' images/deb/control.in | sed -e 's|@VERSION@|$(DEB_VERSION)|' \
	    -e 's|@ARCH@|$(DEB_ARCH)|' -e "s|@DEPENDS@|$$depends|" -e "s|@SIZE@|$$size|" \
	    > $$root/DEBIAN/control; \
	(cd $$root && find etc -type f | sed 's|^|/|' | sort) > $$root/DEBIAN/conffiles; \
	install -m 0755 images/deb/postinst images/deb/prerm images/deb/postrm $$root/DEBIAN/; \
	(cd $$root && find usr lib -type f -exec md5sum {} + | sort -k2) > $$root/DEBIAN/md5sums
	dpkg-deb --root-owner-group -Zxz --build $(DEB_TREE)/debian/ebpf-monitor $(DEB)
	@echo "deb: $(DEB)"
