# confmesh build entry points. `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# Use the go on PATH; fall back to the standard install location.
export PATH := $(PATH):/usr/local/go/bin

BIN      := bin
FUZZTIME ?= 30s

# protoc is Debian's protobuf-compiler; its version is stamped into every
# generated file, so generation insists on it. The Go plugins are pinned as
# `tool` directives in go.mod and run through `go tool`.
PROTOC_VERSION := 3.21.12
PROTOS          = $(shell find api -name '*.proto' | LC_ALL=C sort)
SUDO           := $(if $(filter 0,$(shell id -u)),,sudo)

.DEFAULT_GOAL := help
.PHONY: help deps build test lint demo bench fuzz fuzz-ci generate architecture clean k8s-tools image k8s-e2e

help:
	@echo "make demo      local multi-node demo (network namespaces, simulated TEE)"
	@echo "make test      lint, then all tests, a short fuzz run (fuzz-ci), then the real-cluster e2e (builds the k8s tools once)"
	@echo "make build     compile everything; binaries go to $(BIN)/"
	@echo "make lint      gofmt and go vet"
	@echo "make bench     Go benchmarks, then '$(BIN)/confmesh bench' verify, cni, controlplane, throughput and a soak (SOAK_DURATION, default 30m; control-plane failovers with the k8s tools; result set in bench/results/)"
	@echo "make fuzz      every Fuzz target for FUZZTIME ($(FUZZTIME)) each"
	@echo "make fuzz-ci   every Fuzz target for FUZZ_CI_TIME ($(FUZZ_CI_TIME)) each (part of make test)"
	@echo "make generate  regenerate protobuf code under api/ (needs protoc)"
	@echo "make architecture  redraw docs/images/architecture.png (graphviz, installed if missing)"
	@echo "make image     OCI image tarballs of the binaries and of the pod sandbox (offline, reproducible)"
	@echo "make k8s-e2e   real-cluster e2e: kubectl apply -k the sim overlay on a 3-node Kubernetes in namespaces (root)"
	@echo "make k8s-tools build or reuse the real-cluster tools (Kubernetes, etcd, containerd) in the cache"
	@echo "make clean     remove $(BIN)/"

# Runtime tools the namespace tests and the demo drive: ip (iproute2) and
# nft (nftables, which the reference portmap plugin chained in the CNI tests
# needs). Installed only when missing.
deps:
	@missing=""; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# confmesh-cni is copied onto hosts whose libc is unknown: build it static.
build:
	go build ./...
	@if [ -d cmd ]; then mkdir -p $(BIN) && go build -o $(BIN)/ ./cmd/confmesh && \
		CGO_ENABLED=0 go build -o $(BIN)/ ./cmd/confmesh-cni; fi

# The API-server tests (agent/podmeta/kube, agent/uninstall) run against a
# real etcd + kube-apiserver from the tool cache, and the real-cluster e2e
# (run after the rest, alone: it is the heaviest) needs every tool and the
# images. A cold tool cache costs ~15 min of CPU once.
K8S_E2E = CONFMESH_K8S_E2E=1 go test -count=1 -timeout 30m -v -run TestRealCluster ./e2e/k8s/
test: deps lint k8s-tools image
	go test -count=1 -timeout 15m ./...
	$(MAKE) --no-print-directory fuzz-ci
	$(K8S_E2E)

# Generated files (marked "Code generated ... DO NOT EDIT.") are exempt from gofmt.
lint:
	@unformatted=$$(gofmt -l . | while read -r f; do \
		grep -qE '^// Code generated .* DO NOT EDIT\.$$' "$$f" || echo "$$f"; \
	done); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):"; echo "$$unformatted"; exit 1; \
	fi
	go vet ./...

# The demo needs root (network namespaces, TUN devices, nftables, a packet
# capture) and, at run time, only the ip command (Debian: iproute2): the
# nftables rules, WireGuard and the capture are driven in-process over
# netlink and AF_PACKET. A missing iproute2 is installed with apt-get.
# Flags pass through: make demo DEMO_FLAGS="--nodes 5 --keep".
DEMO_FLAGS ?=
demo:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make demo: the demo needs root: it creates network namespaces, TUN devices and nftables rules (run: sudo make demo)"; \
		exit 1; \
	fi
	@if ! command -v ip >/dev/null; then \
		if ! command -v apt-get >/dev/null; then echo "make demo: the ip command (iproute2) is missing; install it"; exit 1; fi; \
		echo "make demo: installing iproute2 (the ip command)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2; \
	fi
	@command -v go >/dev/null || { echo "make demo: Go is needed to build bin/confmesh ($$(grep -m1 '^go ' go.mod)); see https://go.dev/dl/"; exit 1; }
	mkdir -p $(BIN)
	go build -o $(BIN)/ ./cmd/confmesh
	CGO_ENABLED=0 go build -o $(BIN)/ ./cmd/confmesh-cni
	./$(BIN)/confmesh demo $(DEMO_FLAGS)

bench: build
	go test -run '^$$' -bench . -benchtime 2s ./internal/... ./bench/...
	@# The control plane under 20,000 idle connections from 1,000 addresses (docs/controlplane.md "Connection limits").
	CONFMESH_CONNFLOOD_FULL=1 go test -count=1 -v -timeout 10m -run TestIdleConnectionFloodHonestNodesProceed ./controlplane/
	@# The confmesh benches (docs/benchmarks.md; cni, throughput and soak need root) store their figures in one
	@# result set, bench/results/<date>-<host>.json (keys verify, cni, controlplane, throughput, soak); throughput
	@# adds the markdown table and the plot; the soak runs last, for SOAK_DURATION. iperf3 comes from Debian
	@# when missing, stock wireguard-go from the pinned module. The soak's control-plane events are failovers
	@# between two replicas on a real kube-apiserver when `make k8s-tools` has built it (the tool cache is
	@# looked up as the invoking user, not root), else kills of one standalone control plane (SOAK_CONTROL_PLANES).
	command -v iperf3 >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3; }
	go build -o $(BIN)/wireguard-go golang.zx2c4.com/wireguard && mkdir -p bench/results && r=bench/results/$$(date -u +%F)-$$(hostname -s) && \
	./$(BIN)/confmesh bench verify --results $$r.json && \
	$(SUDO) ./$(BIN)/confmesh bench cni --results $$r.json && \
	./$(BIN)/confmesh bench controlplane $(CONTROLPLANE_FLAGS) --results $$r.json && \
	$(SUDO) ./$(BIN)/confmesh bench throughput $(THROUGHPUT_FLAGS) --results $$r.json --markdown $$r.md --plot $$r.png && \
	$(SUDO) ./$(BIN)/confmesh bench soak --duration $(SOAK_DURATION) --control-planes $(SOAK_CONTROL_PLANES) \
		--k8s-tools "$$(bash k8s/tools/build.sh --dir)" $(SOAK_FLAGS) --results $$r.json

# Flags for the throughput run, e.g. THROUGHPUT_FLAGS="--duration 10s --rounds 6".
THROUGHPUT_FLAGS ?=
# Flags for the control plane run, e.g. CONTROLPLANE_FLAGS="--nodes 1000".
CONTROLPLANE_FLAGS ?=
# The soak's length and further flags, e.g. SOAK_DURATION=5m SOAK_FLAGS="--every 20s --nodes 4".
SOAK_DURATION ?= 30m
SOAK_FLAGS ?=
# auto: failovers between two control-plane replicas on a real kube-apiserver when the k8s tools are built,
# else kills of one standalone control plane; kubernetes or standalone force one.
SOAK_CONTROL_PLANES ?= auto

# `go test -fuzz` takes one package and one target at a time, so list them all
# first ("FuzzX" lines, then "ok <package>"; only the packages whose tests
# define one, so no other test binary is built or started) and run each in turn. A finding
# stops the run (the failing input is written under the package's
# testdata/fuzz/<FuzzX>/; commit it as a seed once fixed).
# FUZZ_RUN is the loop; $(1) is the time (or Nx count) per target, $(2) extra
# flags. A time-limited run that Go's fuzz-time race (see fuzz-ci) stops with
# "context deadline exceeded" and no failing input is reported, not failed.
define FUZZ_RUN
	@pkgs=$$(grep -rl --include='*_test.go' -E '^func Fuzz[A-Z]' . | xargs -r -n1 dirname | sort -u); \
	targets=$$([ -z "$$pkgs" ] || go test -list '^Fuzz' $$pkgs | \
		awk '/^Fuzz/ { names[n++] = $$1; next } /^ok/ { for (i = 0; i < n; i++) print $$2, names[i]; n = 0 }'); \
	if [ -z "$$targets" ]; then echo "fuzz: no Fuzz targets found"; exit 0; fi; \
	while read -r pkg name; do \
		echo "== $$pkg $$name ($(1))"; start=$$SECONDS; \
		log=$$(mktemp); \
		if ! go test -run "^$$" -fuzz "^$$name\$$" -fuzztime $(1) -fuzzminimizetime 1s $(2) "$$pkg" 2>&1 | tee "$$log"; then \
			if grep -q 'context deadline exceeded' "$$log" && ! grep -qE 'Failing input written|panic:' "$$log"; then \
				echo "== $$pkg $$name: stopped by Go's fuzz-time race (go.dev/issue/75804, fixed in Go 1.27), no failing input: not a finding"; \
			else rm -f "$$log"; exit 1; fi; \
		fi; rm -f "$$log"; \
		echo "== $$pkg $$name: $$((SECONDS - start)) s"; \
	done <<< "$$targets"
endef

fuzz:
	$(call FUZZ_RUN,$(FUZZTIME),)

# CI's fuzz budget: every Fuzz target (9 today: attest report, evidence,
# policy, SNP verify, TDX quote, TDX verify; CSR; CNI config; JWT-SVID) for
# FUZZ_CI_TIME executions each with two workers, plus per target the
# instrumented build (cached after the first run) and the seed corpus.
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report "context deadline exceeded" as a failure when the time runs out
# under load (go.dev/issue/75804, fixed in Go 1.27; seen once in five
# `make test` runs under a CPU hog); a count has no deadline to race.
# 3000 executions take 1-7 s per target on an idle 2-core machine (32 s in
# all, warm), several times that under heavy load. `make test` runs it after the unit tests.
FUZZ_CI_TIME ?= 3000x
fuzz-ci:
	$(call FUZZ_RUN,$(FUZZ_CI_TIME),-parallel 2)

# Generated code is committed: only run this after editing a .proto file.
generate:
	@if ! command -v protoc >/dev/null; then \
		echo "protoc not found; installing protobuf-compiler"; \
		$(SUDO) apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev; \
	fi
	@v=$$(protoc --version); if [ "$$v" != "libprotoc $(PROTOC_VERSION)" ]; then \
		echo "generate: want libprotoc $(PROTOC_VERSION), have '$$v'"; exit 1; \
	fi
	protoc -I api \
		--plugin=protoc-gen-go="$$(go tool -n protoc-gen-go)" \
		--plugin=protoc-gen-go-grpc="$$(go tool -n protoc-gen-go-grpc)" \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		$(PROTOS)

# The README's architecture picture: docs/images/architecture.dot drawn by
# graphviz's dot (Debian: graphviz, installed when missing). The PNG is
# committed, so nothing else needs graphviz.
architecture:
	@if ! command -v dot >/dev/null; then \
		echo "dot not found; installing graphviz"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz fonts-dejavu-core; \
	fi
	dot -Tpng -Gdpi=100 docs/images/architecture.dot -o docs/images/architecture.png

# The install image, built offline and reproducibly (no Docker): one layer
# with /usr/local/bin/confmesh (the entrypoint) and /usr/local/bin/confmesh-cni
# (the agent installs it onto the host), as an OCI image-layout tarball for
# `ctr -n k8s.io images import`, `podman load` or `skopeo copy oci-archive:`.
# Also the pod sandbox (pause) image, for clusters that reach no registry.
# The Dockerfile builds the same layout with Docker.
IMAGE_REF ?= docker.io/library/confmesh:dev
PAUSE_REF ?= localhost/confmesh/pause:1
image:
	mkdir -p $(BIN)/image
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -buildid=" -o $(BIN)/image/ ./cmd/confmesh ./cmd/confmesh-cni ./internal/ociimage/pause
	go run ./internal/ociimage/build -o $(BIN)/confmesh-image.tar -ref $(IMAGE_REF) -entrypoint /usr/local/bin/confmesh \
		$(BIN)/image/confmesh=/usr/local/bin/confmesh $(BIN)/image/confmesh-cni=/usr/local/bin/confmesh-cni
	go run ./internal/ociimage/build -o $(BIN)/pause-image.tar -ref $(PAUSE_REF) -entrypoint /pause $(BIN)/image/pause=/pause

# Kubernetes, etcd and containerd for the real-cluster tests, built from the
# modules under k8s/tools into ${XDG_CACHE_HOME:-~/.cache}/confmesh/k8s-tools/<versions>
# and reused from there (cold: ~15 min of CPU on 2 cores). NICE=19 yields
# the CPU to other work.
k8s-tools:
	k8s/tools/build.sh

# The real-cluster e2e (docs/install.md): builds or reuses the tools and the
# images, then runs e2e/k8s (root: namespaces, cgroups, containerd).
k8s-e2e: k8s-tools image
	$(K8S_E2E)

clean:
	rm -rf $(BIN)
