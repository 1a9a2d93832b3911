#!/bin/sh
# Signing keys for the Compose example: one per agent, bound to its backend
# (docs/agent.md, Signing), from `openssl rand -base64 32` as in production.
#
#   ./gen-keys.sh keys api-1 api-2
#
# writes <out dir>/agent-<backend>.key (the agent's LOADWISE_KEY_FILE: its key
# alone) and <out dir>/gateway.keys (LOADWISE_GW_KEY_FILE: every agent's key,
# each bound to its backend, so what one agent's key signs for another backend
# is dropped). Run it again to rotate every key; then restart the stack.
#
# For trials: the files are world-readable (the agents warn about it) so that
# the containers' user (node, uid 1000) can read them whoever runs this; in
# production keep them 0600/0640, owned by the service's user, in your secret
# store. Keep <out dir> out of git: examples/compose/.gitignore ignores keys/.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 <out dir> <backend id>..." >&2; exit 2; }
out=$1
shift
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl is required" >&2; exit 2; }
mkdir -p "$out"
# Inside a git work tree the keys must be ignored there (as gen-certs.sh checks for its keys):
# one `git add .` away from a commit otherwise.
if command -v git >/dev/null 2>&1 && git -C "$out" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
  && ! git -C "$out" check-ignore -q gateway.keys; then
  rmdir "$out" 2>/dev/null || true
  echo "$0: $out is inside a git work tree that does not ignore it: name it keys (examples/compose/.gitignore), or write outside the work tree" >&2
  exit 2
fi
tmp=$out/gateway.keys.tmp
: > "$tmp"
for backend in "$@"; do
  case $backend in
    *[!A-Za-z0-9._:@-]* | '') echo "$0: \"$backend\" is not a backend id" >&2; rm -f "$tmp"; exit 2 ;;
  esac
  line="agent-$backend $(openssl rand -base64 32) $backend"
  printf '%s\n' "$line" > "$out/agent-$backend.key"
  chmod 0644 "$out/agent-$backend.key"
  printf '%s\n' "$line" >> "$tmp"
done
chmod 0644 "$tmp"
mv "$tmp" "$out/gateway.keys"
