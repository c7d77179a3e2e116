# Builds GenNative's C core. Called by the Mix compiler task in mix.exs, which
# passes MIX_APP_PATH, ERTS_INCLUDE_DIR, ERL_EI_INCLUDE_DIR and ERL_EI_LIBDIR;
# outputs go under $(MIX_APP_PATH), never into the source tree.
#
#   make DEBUG=1      -g -O0
#   make SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer

MIX_APP_PATH ?= $(CURDIR)/_build/make
PRIV := $(MIX_APP_PATH)/priv
OBJ  := $(MIX_APP_PATH)/obj

ERL_ROOT := $(shell erl -noshell -eval 'io:format("~s", [code:root_dir()]), halt().' 2>/dev/null)
ERTS_INCLUDE_DIR ?= $(wildcard $(ERL_ROOT)/erts-*/include)

CC ?= cc
CFLAGS ?= -O2
CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -fvisibility=hidden -MMD -MP
CFLAGS += -I$(ERTS_INCLUDE_DIR)
LDFLAGS_NIF := -shared -pthread

ifeq ($(DEBUG),1)
CFLAGS += -g -O0
endif
ifeq ($(SANITIZE),1)
CFLAGS += -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -DGN_SANITIZE
LDFLAGS_NIF += -fsanitize=address,undefined
endif

NIF_SRC := $(wildcard c_src/*.c)
NIF_OBJ := $(NIF_SRC:c_src/%.c=$(OBJ)/nif/%.o)
NIF_SO  := $(PRIV)/gen_native_nif.so

all: $(NIF_SO)
	@: # a recipe, so make stays quiet when nothing is stale

$(NIF_SO): $(NIF_OBJ) | $(PRIV)
	$(CC) $(LDFLAGS_NIF) -o $@ $^

$(OBJ)/nif/%.o: c_src/%.c | $(OBJ)/nif
	$(CC) $(CFLAGS) -c -o $@ $<

$(PRIV) $(OBJ)/nif:
	mkdir -p $@

clean:
	rm -rf $(OBJ) $(NIF_SO)

.PHONY: all clean

-include $(NIF_OBJ:.o=.d)
