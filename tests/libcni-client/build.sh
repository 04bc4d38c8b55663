#!/usr/bin/env bash
# Builds cnirt (main.go beside this script) offline against Debian's libcni sources
# (golang-go + golang-github-appc-cni-dev), in GOPATH mode. Usage: build.sh OUTPUT
set -euo pipefail
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TMP=$(mktemp -d /tmp/cnirt-build.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/src/cnirt"
cp "$HERE/main.go" "$TMP/src/cnirt/"
case "$OUT" in /*) ;; *) OUT=$PWD/$OUT ;; esac
mkdir -p "$(dirname "$OUT")"
(cd "$TMP/src/cnirt" && env GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH="$TMP:/usr/share/gocode" \
  GOCACHE="$TMP/cache" CGO_ENABLED=0 go build -o "$OUT.tmp.$$" .)
mv -f "$OUT.tmp.$$" "$OUT"
