# libFuzzer targets; included by GNUmakefile.
#
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS=fuzz_query] [FUZZ_MERGE=1]
#             [FUZZ_RUNS=1000000] [FUZZ_REPORT=1]
#
# Every tests/fuzz/fuzz_<name>.c is a target (LLVMFuzzerTestOneInput) built
# with clang, libFuzzer, ASan and UBSan against pkg/ compiled the same way
# (-fsanitize=fuzzer-no-link), in its own tree build-fuzz/. Targets named
# fuzz_aggregator_* also link the aggregator's objects (all but main.o).
# Each runs FUZZ_SECONDS on a scratch copy of its seed corpus
# tests/fuzz/corpus/<target>/; any finding fails, and the input that caused
# it is left in build-fuzz/artifacts/. FUZZ_MERGE=1 adds the new interesting
# inputs to the seed corpus (libFuzzer -merge=1) afterwards.

FUZZ_BUILD    := build-fuzz
FUZZ_SECONDS  ?= 60
FUZZ_SAN      := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS   := -O1 -g $(subst -I$(BUILD)/,-I$(FUZZ_BUILD)/,$(SRC_FLAGS)) $(FUZZ_SAN)

FUZZ_SRCS     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS     := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(FUZZ_SRCS))
FUZZ_PROTO_SRCS := $(patsubst pkg/%.proto,$(FUZZ_BUILD)/gen/%.pb-c.c,$(PROTOS))
FUZZ_PROTO_HDRS := $(FUZZ_PROTO_SRCS:.c=.h)
FUZZ_PKG_OBJS := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(PKG_SRCS)) $(FUZZ_PROTO_SRCS:.c=.o)
FUZZ_AGG_OBJS := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(filter-out cmd/aggregator/main.c,$(AGG_SRCS)))
FUZZ_OBJS     := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(PKG_SRCS) $(FUZZ_SRCS)) $(FUZZ_AGG_OBJS)

.PHONY: fuzz fuzz-bins

fuzz-bins: $(FUZZ_BINS)

fuzz: $(FUZZ_BINS)
	@FUZZ_MERGE=$(FUZZ_MERGE) FUZZ_RUNS=$(FUZZ_RUNS) FUZZ_REPORT=$(FUZZ_REPORT) \
	    scripts/run-fuzz.sh $(FUZZ_SECONDS) \
	    $(if $(FUZZ_TARGETS),$(addprefix $(FUZZ_BUILD)/,$(FUZZ_TARGETS)),$(FUZZ_BINS))

$(FUZZ_BUILD)/gen/%.pb-c.c $(FUZZ_BUILD)/gen/%.pb-c.h &: pkg/%.proto
	@mkdir -p $(@D)
	$(PROTOC_C) --proto_path=pkg --c_out=$(FUZZ_BUILD)/gen $<

$(FUZZ_OBJS): $(FUZZ_BUILD)/%.o: %.c $(FUZZ_PROTO_HDRS)
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/gen/%.pb-c.o: $(FUZZ_BUILD)/gen/%.pb-c.c
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/libpkg.a: $(FUZZ_PKG_OBJS)
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_aggregator_%: $(FUZZ_BUILD)/tests/fuzz/fuzz_aggregator_%.o $(FUZZ_AGG_OBJS) $(FUZZ_BUILD)/libpkg.a
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_BUILD)/libpkg.a
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
