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
# Every id first, then every file: a bad id half way through left the first agents' keys
# rewritten and gateway.keys not, and their reports were refused after a restart. The key
# id is agent-<backend>, and key ids are [A-Za-z0-9._-], at most 64 (backend ids also take
# `:` and `@`, which a key id cannot carry).
seen=' '
for backend in "$@"; do
  # A case pattern, not grep: grep tests each line, and an id with a newline in it passed.
  case $backend in
    '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._-]*) bad=1 ;;
    *) bad=0 ;;
  esac
  if [ "$bad" = 1 ] || [ "${#backend}" -gt 58 ]; then
    echo "$0: \"$backend\": give backend ids of letters, digits, '.', '_' and '-', at most 58, starting with a letter or digit (its key id is agent-<id>)" >&2
    exit 2
  fi
  case $seen in
    *" $backend "*) echo "$0: \"$backend\" is given twice" >&2; exit 2 ;;
  esac
  seen="$seen$backend "
done
# A failed run (openssl) leaves the keys as they were, and no temporary file.
trap 'rm -f "$out"/*.tmp' EXIT
: > "$out/gateway.keys.tmp"
for backend in "$@"; do
  line="agent-$backend $(openssl rand -base64 32) $backend"
  printf '%s\n' "$line" > "$out/agent-$backend.key.tmp"
  printf '%s\n' "$line" >> "$out/gateway.keys.tmp"
done
for backend in "$@"; do
  chmod 0644 "$out/agent-$backend.key.tmp"
  mv "$out/agent-$backend.key.tmp" "$out/agent-$backend.key"
done
chmod 0644 "$out/gateway.keys.tmp"
mv "$out/gateway.keys.tmp" "$out/gateway.keys"
