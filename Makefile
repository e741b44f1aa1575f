# cdisk — hand-written, non-recursive.  `make`, `make check`, `make install`.
# `make V=1` shows the commands; `make O=dir` builds elsewhere.

VERSION := 0.1.0
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
PKG_CONFIG ?= pkg-config
SCDOC ?= scdoc

O ?= build

# lib/ has one folder per layer, lowest first (docs/DESIGN.md "The layers,
# end to end"; tests/905-layers.bats holds the order).  Each is on the
# include path, so an #include names a header, never its folder.
LIB_DIRS := lib/base lib/dev lib/disk lib/engine lib/nbd lib/control
LIB_INCLUDES := -Ilib $(LIB_DIRS:%=-I%)

CFLAGS ?= -O2 -g
SANITIZE ?=

override CFLAGS += -std=gnu11 -fPIC -Wall -Wextra -Wformat=2 -Wshadow \
	-Wstrict-prototypes -Wmissing-prototypes -Wold-style-definition \
	-Wno-unused-result -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -MMD -MP $(LIB_INCLUDES)
ifneq ($(SANITIZE),)
override CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer
override LDFLAGS += -fsanitize=address,undefined
endif

POPT_LIBS := $(shell $(PKG_CONFIG) --libs popt 2>/dev/null || echo -lpopt)
JANSSON_LIBS := $(shell $(PKG_CONFIG) --libs jansson 2>/dev/null || echo -ljansson)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null || echo -lcmocka)
INIH_LIBS := $(shell $(PKG_CONFIG) --libs inih 2>/dev/null || echo -linih)
TARGET_LIBS := $(shell $(PKG_CONFIG) --libs libnbd libiscsi libcurl gnutls 2>/dev/null || \
	echo -lnbd -liscsi -lcurl -lgnutls)
EXT2FS_LIBS := $(shell $(PKG_CONFIG) --libs ext2fs com_err 2>/dev/null || echo -lext2fs -lcom_err)
LIB_LIBS := -lm -lpthread -ldl $(INIH_LIBS) $(JANSSON_LIBS) $(TARGET_LIBS) $(EXT2FS_LIBS)

ifeq ($(V),1)
Q :=
else
Q := @
endif

LIB_SRCS := $(filter-out %-test.c,$(wildcard $(LIB_DIRS:%=%/*.c)))
LIB_OBJS := $(LIB_SRCS:%.c=$(O)/%.o)
UNIT_SRCS := $(wildcard $(LIB_DIRS:%=%/*-test.c))
UNIT_BINS := $(patsubst %.c,$(O)/tests/unit/%,$(notdir $(UNIT_SRCS)))
PROGRAMS := $(patsubst cmd/%.c,%,$(wildcard cmd/cdisk-*.c))
PROGRAM_BINS := $(PROGRAMS:%=$(O)/bin/%)
TEST_TOOLS := $(patsubst tests/%.c,$(O)/tests/%,$(wildcard tests/*.c))
MAN_SRCS := $(wildcard man/*.scd)
MAN_PAGES := $(MAN_SRCS:man/%.scd=$(O)/man/%)
SONAME := libcdisk.so.0
SHLIB := $(O)/lib/$(SONAME)

all: $(PROGRAM_BINS) $(SHLIB) $(O)/lib/libcdisk.a $(O)/lib/cdisk.pc $(MAN_PAGES) \
	$(O)/systemd/cdisk-serve@.service

$(O)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<" $(if $(Q),,>/dev/null)
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(O)/lib/libcdisk.a: $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(SHLIB): $(LIB_OBJS) lib/libcdisk.syms
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) \
		-Wl,--version-script=lib/libcdisk.syms -o $@ $(LIB_OBJS) $(LIB_LIBS)
	$(Q)ln -sf $(SONAME) $(O)/lib/libcdisk.so

# Programs find the library next to them in the tree and once installed.
# The CLI helpers the library uses too (lib/base/text.c: sizes, the exit-code
# translator) are not exported: every program links its own copy.
CLI_OBJS := $(O)/cmd/cli.o $(O)/lib/base/text.o
$(O)/bin/%: $(O)/cmd/%.o $(CLI_OBJS) $(SHLIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(O)/cmd/$*.o $(CLI_OBJS) -L$(O)/lib -lcdisk \
		-Wl,-rpath,'$$ORIGIN/../lib' $(POPT_LIBS) $(JANSSON_LIBS) -lm

$(O)/cmd/%.o: override CFLAGS += -Icmd

# Unit tests and test tools see the library's internals: link the archive.
# A unit test lives in its code's folder: one rule per folder.
define UNIT_RULE
$$(O)/tests/unit/%: $$(O)/$(1)/%.o $$(O)/lib/libcdisk.a
	@mkdir -p $$(dir $$@)
	$$(Q)$$(CC) $$(LDFLAGS) -o $$@ $$< $$(O)/lib/libcdisk.a $$(CMOCKA_LIBS) $$(LIB_LIBS)
endef
$(foreach d,$(LIB_DIRS),$(eval $(call UNIT_RULE,$(d))))

$(O)/tests/%: $(O)/tests/%.o $(O)/lib/libcdisk.a
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) -o $@ $< $(O)/lib/libcdisk.a $(LIB_LIBS)

$(O)/man/%: man/%.scd
	@mkdir -p $(dir $@)
	$(Q)$(SCDOC) < $< > $@

# The installation paths written into generated files, kept in a stamp
# that changes only when they do: `make` then `make install PREFIX=/usr`
# regenerates what names the old paths.
PATHS := PREFIX=$(PREFIX) BINDIR=$(BINDIR) LIBDIR=$(LIBDIR) INCLUDEDIR=$(INCLUDEDIR)
$(O)/paths.stamp: FORCE
	@mkdir -p $(dir $@)
	$(Q)echo '$(PATHS)' | cmp -s - $@ || echo '$(PATHS)' > $@

$(O)/lib/cdisk.pc: lib/cdisk.pc.in Makefile $(O)/paths.stamp
	@mkdir -p $(dir $@)
	$(Q)sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

$(O)/systemd/cdisk-serve@.service: systemd/cdisk-serve@.service.in Makefile \
		$(O)/paths.stamp
	@mkdir -p $(dir $@)
	$(Q)sed -e 's|@BINDIR@|$(BINDIR)|' $< > $@

# Fuzz targets (libFuzzer): the library's sources built in, with clang.
FUZZ_CC ?= clang
FUZZ_BINS := $(patsubst fuzz/%.c,$(O)/fuzz/%,$(wildcard fuzz/*.c))
$(O)/fuzz/%: fuzz/%.c $(LIB_SRCS) $(wildcard lib/*.h $(LIB_DIRS:%=%/*.h) fuzz/*.h)
	@mkdir -p $(dir $@)
	@echo "  FUZZ    $@"
	$(Q)$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 \
		-D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(LIB_INCLUDES) -o $@ $< $(LIB_SRCS) $(LIB_LIBS)

fuzz: $(FUZZ_BINS)

deps:
	$(Q)scripts/install-deps.sh

test-build: $(PROGRAM_BINS) $(UNIT_BINS) $(TEST_TOOLS) $(MAN_PAGES) $(FUZZ_BINS)

# The suite runs against a sanitizer build of its own, kept apart from
# the normal one.
check: deps
	$(Q)$(MAKE) --no-print-directory O=build/check SANITIZE=1 test-build
	$(Q)tests/run-tests.sh build/check

demo: deps all $(TEST_TOOLS)
	$(Q)scripts/demo.sh $(O)

install: all
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) \
		$(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR) \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man7 \
		$(DESTDIR)$(SYSTEMDUNITDIR)
	install -m 0755 $(PROGRAM_BINS) $(DESTDIR)$(BINDIR)/
	install -m 0755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libcdisk.so
	install -m 0644 $(O)/lib/libcdisk.a $(DESTDIR)$(LIBDIR)/
	install -m 0644 lib/cdisk.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0644 $(O)/lib/cdisk.pc $(DESTDIR)$(PKGCONFIGDIR)/
	for page in $(MAN_PAGES); do \
		sec=$${page##*.}; install -m 0644 $$page $(DESTDIR)$(MANDIR)/man$$sec/; \
	done
	install -m 0644 $(O)/systemd/cdisk-serve@.service $(DESTDIR)$(SYSTEMDUNITDIR)/
	install -m 0644 completions/cdisk $(DESTDIR)$(BASHCOMPDIR)/cdisk
	for p in $(PROGRAMS); do ln -sf cdisk $(DESTDIR)$(BASHCOMPDIR)/$$p; done

uninstall:
	rm -f $(PROGRAMS:%=$(DESTDIR)$(BINDIR)/%) $(DESTDIR)$(LIBDIR)/$(SONAME) \
		$(DESTDIR)$(LIBDIR)/libcdisk.so $(DESTDIR)$(LIBDIR)/libcdisk.a \
		$(DESTDIR)$(INCLUDEDIR)/cdisk.h $(DESTDIR)$(PKGCONFIGDIR)/cdisk.pc \
		$(DESTDIR)$(BASHCOMPDIR)/cdisk $(PROGRAMS:%=$(DESTDIR)$(BASHCOMPDIR)/%) \
		$(DESTDIR)$(SYSTEMDUNITDIR)/cdisk-serve@.service
	for page in $(MAN_PAGES); do \
		p=$${page##*/}; rm -f $(DESTDIR)$(MANDIR)/man$${p##*.}/$$p; done

clean:
	rm -rf build

help:
	@echo "make            build programs, library, man pages into $(O)/"
	@echo "make check      install test dependencies, build with ASan+UBSan, run every test"
	@echo "make demo       run the main job on a local file standing in for the server"
	@echo "make install    install under PREFIX=$(PREFIX) (DESTDIR honoured)"
	@echo "make deps       install the Debian packages the build and tests need"

.PHONY: all check test-build fuzz deps demo install uninstall clean help FORCE
.SECONDARY:

-include $(shell find $(O) -name '*.d' 2>/dev/null)
