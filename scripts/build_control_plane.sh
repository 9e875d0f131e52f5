#!/usr/bin/env bash
# Build the local Kubernetes control plane the eks-profile tests run against (tests/cluster):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and the JobSet controller,
# from the Go module proxy at the versions pinned in tools/controlplane/*/go.mod.
#
# Output: .tools/controlplane/bin/ (override with LLMOPS_CONTROLPLANE_BIN). Idempotent: when every
# binary exists and the stamp records the same hash of the pins (go.mod/go.sum) and of this script,
# it exits at once (~20 ms). A cold build takes ~10 min on 2 busy cores (kube-apiserver is most of
# it); with Go's own module and build caches at their defaults, a rebuild or a second checkout on
# the same machine only links (~20 s).
# Builds run under `nice` so that they never starve other work on the machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULES="$ROOT/tools/controlplane"
OUT="${LLMOPS_CONTROLPLANE_BIN:-$ROOT/.tools/controlplane/bin}"
STAMP="$OUT/.stamp"

# name  module-dir  package
PROGRAMS=(
  "etcd                     kubernetes go.etcd.io/etcd/server/v3"
  "kube-apiserver           kubernetes k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-controller-manager  kubernetes k8s.io/kubernetes/cmd/kube-controller-manager"
  "kube-scheduler           kubernetes k8s.io/kubernetes/cmd/kube-scheduler"
  "kwok                     kwok       sigs.k8s.io/kwok/cmd/kwok"
  "jobset-controller        jobset     sigs.k8s.io/jobset"
)

# What the binaries are built from: the pins of the three program modules (go.mod holds the replace
# lines, go.sum the hashes) and this script. (tools/controlplane/crds only pins CRD sources.)
inputs_hash() {
  local m
  for m in kubernetes kwok jobset; do cat "$MODULES/$m/go.mod" "$MODULES/$m/go.sum"; done |
    cat - "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}

all_built() {
  local line name
  for line in "${PROGRAMS[@]}"; do
    read -r name _ <<<"$line"
    [[ -x "$OUT/$name" ]] || return 1
  done
}

HASH="$(inputs_hash)"
if all_built && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  echo "control plane binaries up to date in ${OUT#"$ROOT/"}"
  exit 0
fi

command -v go >/dev/null || { echo "error: go is not on PATH (needed to build the control plane)" >&2; exit 1; }
mkdir -p "$OUT"
# One build at a time per output directory (two test sessions may start together).
exec 9>"$OUT/.lock"
flock 9
if all_built && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  echo "control plane binaries up to date in ${OUT#"$ROOT/"} (built by a concurrent run)"
  exit 0
fi
rm -f "$STAMP"

# Version strings, so that /version and --version report the release rather than v0.0.0.
mod_version() { (cd "$MODULES/$1" && go list -m -f '{{.Version}}' "$2"); }
KUBE_VERSION="$(mod_version kubernetes k8s.io/kubernetes)"           # e.g. v1.35.4
KUBE_MINOR="$(cut -d. -f2 <<<"$KUBE_VERSION")"
KUBE_LDFLAGS="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
KUBE_LDFLAGS+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$KUBE_MINOR"
KUBE_LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
KUBE_LDFLAGS+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
JOBSET_LDFLAGS="-X sigs.k8s.io/jobset/pkg/version.GitVersion=$(mod_version jobset sigs.k8s.io/jobset)"

total_start=$SECONDS
for line in "${PROGRAMS[@]}"; do
  read -r name module package <<<"$line"
  case "$module" in
    kubernetes) ldflags="$KUBE_LDFLAGS" ;;
    jobset) ldflags="$JOBSET_LDFLAGS" ;;
    kwok) ldflags="" ;;  # kwok carries its version as a constant
  esac
  start=$SECONDS
  # -s -w: no symbol tables (smaller, faster link); CGO off: static binaries, no C toolchain needed.
  (cd "$MODULES/$module" &&
    CGO_ENABLED=0 nice -n 15 go build -trimpath -ldflags "-s -w $ldflags" -o "$OUT/$name.tmp" "$package")
  mv -f "$OUT/$name.tmp" "$OUT/$name"
  printf '  built %-24s in %4ds  (%s)\n' "$name" $((SECONDS - start)) "$package"
done
echo "$HASH" >"$STAMP"
echo "control plane built in $((SECONDS - total_start))s into ${OUT#"$ROOT/"}"
