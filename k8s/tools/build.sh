#!/usr/bin/env bash
# Builds the tools the real-cluster e2e runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl, etcd,
# containerd, its runc shim and ctr) into a cache directory outside the
# repository, keyed by the pinned versions, and reuses whatever is already
# there. runc comes from Debian (a runc built without seccomp fails under
# containerd's RuntimeDefault profile). The last line printed is the
# directory holding the binaries.
#
#   k8s/tools/build.sh            build what is missing, print the bin dir
#   k8s/tools/build.sh NAME...    only these (e.g. etcd kube-apiserver)
#   k8s/tools/build.sh --dir      print the bin dir only (builds nothing)
#
# A cold build is ~15 min of CPU on 2 cores (Kubernetes ~11, containerd
# ~2.5, etcd ~1.5); set NICE=19 to leave the CPU to other work.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.8
CONTAINERD_VERSION=v2.4.2

# The key names the versions and hashes the module files, so a change to
# either lands in a fresh directory instead of mixing binaries.
sum=$(cat "$here/kube/go.mod" "$here/kube/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum" |
	sha256sum | cut -c1-12)
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_containerd-${CONTAINERD_VERSION}_${sum}"
cache=${CONFMESH_K8S_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/confmesh/k8s-tools}
bin="$cache/$key/bin"

if [[ ${1:-} == --dir ]]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$bin"
export PATH="$PATH:/usr/local/go/bin"
nice=(nice -n "${NICE:-0}")

# build NAME CMD...: runs CMD (which writes $bin/.tmp-NAME) unless NAME is
# already cached; the rename makes a half-written binary never count.
wanted=("$@")
build() {
	local name=$1
	shift
	if [[ ${#wanted[@]} -gt 0 && " ${wanted[*]} " != *" $name "* ]]; then
		return
	fi
	if [[ -x "$bin/$name" ]]; then
		echo "k8s-tools: $name cached"
		return
	fi
	local start=$SECONDS
	echo "k8s-tools: building $name"
	rm -f "$bin/.tmp-$name"
	"$@"
	mv -f "$bin/.tmp-$name" "$bin/$name"
	echo "k8s-tools: built $name in $((SECONDS - start)) s"
}

kube_ldflags() {
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	local f pkg
	for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
		for f in "gitVersion=$K8S_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean \
			buildDate=1970-01-01T00:00:00Z; do
			printf -- "-X '%s.%s' " "$pkg" "$f"
		done
	done
	printf -- "-s -w"
}

kube() {
	local name=$1
	(cd "$here/kube" && "${nice[@]}" go build -trimpath -ldflags "$(kube_ldflags)" \
		-o "$bin/.tmp-$name" "k8s.io/kubernetes/cmd/$name")
}

etcd() {
	(cd "$here/etcd" && "${nice[@]}" go build -trimpath -ldflags "-s -w" -o "$bin/.tmp-etcd" .)
}

# go install needs a GOBIN per binary to land on the temporary name.
containerd_cmd() {
	local name=$1 gobin
	gobin=$(mktemp -d)
	(cd "$gobin" && GOBIN="$gobin" "${nice[@]}" go install -trimpath -ldflags "-s -w" -tags no_btrfs \
		"github.com/containerd/containerd/v2/cmd/$name@$CONTAINERD_VERSION")
	mv -f "$gobin/$name" "$bin/.tmp-$name"
	rm -rf "$gobin"
}

if [[ ${#wanted[@]} -eq 0 || " ${wanted[*]} " == *" runc "* ]]; then
if ! command -v runc >/dev/null; then
	echo "k8s-tools: installing runc (Debian)"
	sudo=""
	[[ $(id -u) -eq 0 ]] || sudo=sudo
	$sudo apt-get install -y -qq --no-install-recommends runc >/dev/null ||
		{ $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends runc >/dev/null; }
fi
ln -sf "$(command -v runc)" "$bin/runc"
fi

start=$SECONDS
# The API server, etcd and kubectl first: the Go tests that need only them
# can run while the rest builds.
build etcd etcd
for c in kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet; do
	build "$c" kube "$c"
done
build containerd containerd_cmd containerd
build containerd-shim-runc-v2 containerd_cmd containerd-shim-runc-v2
build ctr containerd_cmd ctr
echo "k8s-tools: ready in $((SECONDS - start)) s"
echo "$bin"
