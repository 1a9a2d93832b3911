#!/bin/sh
# A throwaway PKI for the loadwise examples: a CA, a broker certificate and
# one client certificate per name given (its CN is the MQTT username the
# ACL in loadwise.acl expects). EC P-256 keys, valid for 30 days.
#
#   ./gen-certs.sh <out dir> gateway agent-api-1 agent-api-2
#   (in this directory, name it certs*: .gitignore keeps those out of git; a directory
#   inside a git work tree where the keys would not be ignored is refused)
#   SERVER_SAN="DNS:broker.internal" ./gen-certs.sh ...   # the broker's names (default below)
#
# For tests and trials only. Keys are written world-readable so that a
# Mosquitto that drops to its own user, in a container or not, can read
# them; in production use your own CA and keep keys 0600/0640.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 <out dir> [client name...]" >&2; exit 2; }
out=$1
shift
san=${SERVER_SAN:-DNS:mosquitto,DNS:localhost,IP:127.0.0.1}
days=${DAYS:-30}
# A new CA in a directory of certificates the old one signed leaves those unverifiable.
if [ -e "$out/ca.pem" ]; then
  echo "$out already holds a CA (ca.pem): a new one would leave its certificates unverifiable; use another directory" >&2
  exit 2
fi
# Inside a git work tree, every key it writes must be ignored there: examples/mosquitto/
# ignores certs*/, but `./gen-certs.sh prod ...` left ca.key and the other keys untracked,
# one `git add .` away from a commit. Checked from the nearest directory of $out that exists.
keys="ca.key server.key"
for name in "$@"; do keys="$keys $name.key"; done
base=$out
below=
while [ ! -d "$base" ]; do
  below=$(basename "$base")${below:+/$below}
  base=$(dirname "$base")
done
if command -v git >/dev/null 2>&1 && (cd "$base" && git rev-parse --is-inside-work-tree) >/dev/null 2>&1; then
  for key in $keys; do
    if ! (cd "$base" && git check-ignore -q -- "${below:+$below/}$key"); then
      echo "$out is inside a git work tree that does not ignore $key there: its private keys would be one 'git add' away from a commit; add the directory to .gitignore, or write outside the work tree" >&2
      exit 2
    fi
  done
fi
mkdir -p "$out"
cd "$out"
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

# shellcheck disable=SC2086 # $ec is a list of options
openssl req -x509 $ec -keyout ca.key -out ca.pem -days "$days" -subj "/CN=loadwise example CA" 2>/dev/null

sign() { # <name> <CN> [extension file]
  # shellcheck disable=SC2086
  openssl req $ec -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
    -days "$days" ${3:+-extfile "$3"} 2>/dev/null
  rm -f "$1.csr"
}

printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
sign server mosquitto server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for name in "$@"; do
  sign "$name" "$name" client.ext
done
rm -f server.ext client.ext ca.srl
chmod 0644 ./*.pem ./*.key
chmod 0600 ca.key # signs certificates; nothing at run time reads it
wrote="ca.pem ca.key server.pem server.key"
for name in "$@"; do wrote="$wrote $name.pem $name.key"; done
echo "wrote $wrote to $out"
