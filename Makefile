# Build, install, test and benchmark the Rust CNI plugins (bridge, macvlan, host-local).
CARGO        ?= cargo
DESTDIR      ?=
CNI_BIN_DIR  ?= $(DESTDIR)/opt/cni/bin
CNITOOL_DIR  ?= $(DESTDIR)/usr/local/bin
BINS         := bridge macvlan host-local
# Release binaries are linked statically and not position-independent (glibc, static, non-PIE):
# no dynamic loader and no self-relocation at each process start a plugin call costs (a static-pie
# rewrites some 12,700 relocations, about 200 KiB of pages, before main: measured 0.13 ms and
# 0.4 MiB per call, see BENCHMARKS.md). The price: the executable's own image is not placed at a
# random address (heap, stack and mmap still are). An explicit --target keeps the flags off
# build scripts and proc-macros.
RELEASE_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static
export RELEASE_RUSTFLAGS
TRIPLE       := $(shell rustc -vV | sed -n 's/^host: //p')
RELEASE_DIR  := target/$(TRIPLE)/release
export RELEASE_DIR
# Debian packages the tests, demo and benchmark use.
DEB_PKGS     := iproute2 iptables nftables iputils-ping jq containernetworking-plugins \
                golang-go golang-github-appc-cni-dev podman runc busybox-static \
                etcd-server etcd-client protobuf-compiler openssl

.PHONY: all build install demo deps test unit lint bench fuzz clean

all: build

build:
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" $(CARGO) build --release --workspace --bins --target $(TRIPLE)

# One multicall binary under the three names (hard links): bridge and macvlan then run
# host-local in their own process (see plugins/multicall). Beside it host-local-etcd, the
# host-local with the etcd client (ipam.store) and the operator commands, installed first so
# that a new host-local finds it. Each name is replaced atomically. cnitool goes to CNITOOL_DIR.
install: build
	install -d $(CNITOOL_DIR)
	install -m 0755 $(RELEASE_DIR)/cnitool $(CNITOOL_DIR)/.cnitool.new
	mv -f $(CNITOOL_DIR)/.cnitool.new $(CNITOOL_DIR)/cnitool
	install -d $(CNI_BIN_DIR)
	install -m 0755 $(RELEASE_DIR)/host-local-etcd $(CNI_BIN_DIR)/.host-local-etcd.new
	mv -f $(CNI_BIN_DIR)/.host-local-etcd.new $(CNI_BIN_DIR)/host-local-etcd
	install -m 0755 $(RELEASE_DIR)/bridge $(CNI_BIN_DIR)/.bridge.new
	for b in $(filter-out bridge,$(BINS)); do ln -f $(CNI_BIN_DIR)/.bridge.new $(CNI_BIN_DIR)/.$$b.new; done
	for b in $(BINS); do mv -f $(CNI_BIN_DIR)/.$$b.new $(CNI_BIN_DIR)/$$b; done

# First run: build, install into /opt/cni/bin (cnitool into /usr/local/bin), then cnitool ADDs and
# DELs a conf-example in scratch namespaces and runs a command on it with `cnitool exec`.
demo: deps install
	CNI_BIN_DIR=$(CNI_BIN_DIR) CNITOOL=$(CNITOOL_DIR)/cnitool scripts/demo.sh conf-examples/bridge.conflist

# What the tests, demo and benchmark need from Debian (as root; skipped when all are present).
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Unit tests (no root) and integration tests (root: real namespaces).
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

unit:
	$(CARGO) test --workspace --lib --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps build
	scripts/bench.sh

FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
