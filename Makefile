# Builds GenNative's C core. Called by the Mix compiler task in mix.exs, which
# passes MIX_APP_PATH, ERTS_INCLUDE_DIR, ERL_EI_INCLUDE_DIR and ERL_EI_LIBDIR;
# outputs go under $(MIX_APP_PATH), never into the source tree.
#
#   make DEBUG=1      -g -O0
#   make SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer

MIX_APP_PATH ?= $(CURDIR)/_build/make
PRIV := $(MIX_APP_PATH)/priv
OBJ  := $(MIX_APP_PATH)/obj

# Starting erl costs a VM boot (0.3 s, seconds on a loaded machine), so it only
# runs when one of the three directories is not given (make run by hand, e.g.
# `make fuzz`); the Mix compiler task passes all three.
ifeq ($(and $(ERTS_INCLUDE_DIR),$(ERL_EI_INCLUDE_DIR),$(ERL_EI_LIBDIR)),)
ERL_ROOT := $(shell erl -noshell -eval 'io:format("~s", [code:root_dir()]), halt().' 2>/dev/null)
ERTS_INCLUDE_DIR ?= $(firstword $(wildcard $(ERL_ROOT)/erts-*/include))
ERL_EI_INCLUDE_DIR ?= $(firstword $(wildcard $(ERL_ROOT)/lib/erl_interface-*/include))
ERL_EI_LIBDIR ?= $(firstword $(wildcard $(ERL_ROOT)/lib/erl_interface-*/lib))
endif

UNAME_S := $(shell uname -s)

CC ?= cc
CFLAGS ?= -O2
CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -fvisibility=hidden -MMD -MP
CFLAGS += -I$(ERTS_INCLUDE_DIR)

ifeq ($(UNAME_S),Darwin)
# macOS: the enif_* symbols are resolved against the VM when it loads the
# NIF, hence dynamic_lookup; the file keeps the .so name, which is what
# erlang:load_nif/2 looks for on every Unix. pthreads are in libSystem, so no
# -pthread (clang warns that it is unused, which -Werror would not forgive
# in a compile). libuv comes from Homebrew (`brew install libuv`), whose
# prefix is not on the compiler's default path on Apple silicon.
LDFLAGS_NIF := -shared -undefined dynamic_lookup -flat_namespace
PTHREAD :=
LIBUV_PREFIX ?= $(firstword $(wildcard /opt/homebrew/opt/libuv /usr/local/opt/libuv))
UV_CFLAGS := $(if $(LIBUV_PREFIX),-I$(LIBUV_PREFIX)/include)
UV_LIBS := $(if $(LIBUV_PREFIX),-L$(LIBUV_PREFIX)/lib) -luv
else
LDFLAGS_NIF := -shared -pthread
PTHREAD := -pthread
UV_CFLAGS :=
UV_LIBS := -luv
endif

ifeq ($(DEBUG),1)
CFLAGS += -g -O0
endif
ifeq ($(SANITIZE),1)
CFLAGS += -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -DGN_SANITIZE
LDFLAGS_NIF += -fsanitize=address,undefined
endif

# fuzz_etf_scan.c is the snapshot checker's fuzz target, built by
# `make fuzz-etf` only.
NIF_SRC := $(filter-out c_src/fuzz_etf_scan.c,$(wildcard c_src/*.c))
NIF_OBJ := $(NIF_SRC:c_src/%.c=$(OBJ)/nif/%.o)
NIF_SO  := $(PRIV)/gen_native_nif.so

# The port program (c_src/port/): libuv and ei. fuzz.c is the fuzz target's
# entry point, built by `make fuzz` only.
PORT_SRC := $(filter-out c_src/port/fuzz.c,$(wildcard c_src/port/*.c))
PORT_OBJ := $(PORT_SRC:c_src/port/%.c=$(OBJ)/port/%.o) $(OBJ)/port/snapshot.o
PORT_BIN := $(PRIV)/gen_native_port
# Replication (c_src/port/raft.c) links libraft, Debian's libraft-dev, found
# with pkg-config; without it the build stops and says what to install.
RAFT_FOUND := $(shell pkg-config --exists raft 2>/dev/null && echo yes)
RAFT_CFLAGS := $(if $(RAFT_FOUND),$(shell pkg-config --cflags raft))
RAFT_LIBS := $(if $(RAFT_FOUND),$(shell pkg-config --libs raft),-lraft)
PORT_CFLAGS := $(filter-out -fPIC,$(CFLAGS)) -I$(ERL_EI_INCLUDE_DIR) $(UV_CFLAGS) $(RAFT_CFLAGS)
PORT_LIBS := -L$(ERL_EI_LIBDIR) -lei $(RAFT_LIBS) $(UV_LIBS) $(PTHREAD)
ifeq ($(SANITIZE),1)
PORT_LIBS += -fsanitize=address,undefined
endif

all: $(NIF_SO) $(PORT_BIN)
	@: # a recipe, so make stays quiet when nothing is stale

$(NIF_SO): $(NIF_OBJ) | $(PRIV)
	$(CC) $(LDFLAGS_NIF) -o $@ $^

$(OBJ)/nif/%.o: c_src/%.c | $(OBJ)/nif
	$(CC) $(CFLAGS) -c -o $@ $<

$(PORT_BIN): $(PORT_OBJ) | $(PRIV)
	$(CC) -o $@ $^ $(PORT_LIBS)

$(OBJ)/port/%.o: c_src/port/%.c | $(OBJ)/port
	$(CC) $(PORT_CFLAGS) -c -o $@ $<

$(OBJ)/port/raft.o: c_src/port/raft.c | $(OBJ)/port
	@test -n "$(RAFT_FOUND)" || { echo "libraft was not found (pkg-config raft): on Debian 12, apt-get install libraft-dev pkg-config (bin/deps does)" >&2; exit 1; }
	$(CC) $(PORT_CFLAGS) -c -o $@ $<

$(OBJ)/port/snapshot.o: c_src/snapshot.c | $(OBJ)/port
	$(CC) $(PORT_CFLAGS) -c -o $@ $<

$(PRIV) $(OBJ)/nif $(OBJ)/port:
	mkdir -p $@

# The port program's fuzz target (clang's libFuzzer, ASan, UBSan):
#   make fuzz [FUZZ_TIME=600]   runs it; findings go to $(OBJ)/fuzz/
# Needs Debian's clang-14 and libclang-rt-14-dev (libFuzzer); `clang` is used
# when on PATH, else clang-14 (Debian 12 installs only the versioned name
# unless the `clang` package is there too).
FUZZ_TIME ?= 600
CLANG ?= $(or $(shell command -v clang 2>/dev/null),$(shell command -v clang-14 2>/dev/null),clang)
FUZZ_BIN := $(OBJ)/fuzz/gen_native_port_fuzz
FUZZ_SRC := $(filter-out c_src/port/main.c c_src/port/raft.c,$(wildcard c_src/port/*.c)) c_src/snapshot.c

$(FUZZ_BIN): $(FUZZ_SRC) $(wildcard c_src/port/*.h) c_src/snapshot.h | $(OBJ)/fuzz
	$(CLANG) -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
	  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -I$(ERL_EI_INCLUDE_DIR) -o $@ $(FUZZ_SRC) -L$(ERL_EI_LIBDIR) -lei $(PTHREAD)

fuzz: $(FUZZ_BIN)
	mkdir -p $(OBJ)/fuzz/corpus
	cd $(OBJ)/fuzz && ./gen_native_port_fuzz -max_total_time=$(FUZZ_TIME) -max_len=4096 \
	  -rss_limit_mb=4096 corpus $(CURDIR)/c_src/port/fuzz_seeds

# The snapshot checker's fuzz target (c_src/fuzz_etf_scan.c, which includes
# etf_scan.c and stubs the one enif_* call it makes):
#   make fuzz-etf [FUZZ_TIME=600]   runs it; findings go to $(OBJ)/fuzz_etf/
FUZZ_ETF_BIN := $(OBJ)/fuzz_etf/gen_native_etf_fuzz

$(FUZZ_ETF_BIN): c_src/fuzz_etf_scan.c c_src/etf_scan.c $(wildcard c_src/*.h) | $(OBJ)/fuzz_etf
	$(CLANG) -std=c11 -D_GNU_SOURCE -DGN_SANITIZE -g -O1 -fno-omit-frame-pointer \
	  -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -I$(ERTS_INCLUDE_DIR) -o $@ c_src/fuzz_etf_scan.c

fuzz-etf: $(FUZZ_ETF_BIN)
	mkdir -p $(OBJ)/fuzz_etf/corpus
	cd $(OBJ)/fuzz_etf && ./gen_native_etf_fuzz -max_total_time=$(FUZZ_TIME) -max_len=4096 \
	  -rss_limit_mb=4096 corpus $(CURDIR)/c_src/etf_scan_fuzz_seeds

$(OBJ)/fuzz $(OBJ)/fuzz_etf:
	mkdir -p $@

clean:
	rm -rf $(OBJ) $(NIF_SO) $(PORT_BIN)

.PHONY: all clean fuzz fuzz-etf

-include $(NIF_OBJ:.o=.d) $(PORT_OBJ:.o=.d)
