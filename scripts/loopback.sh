#!/bin/sh
# Run a command in a network namespace that has only loopback, so the Ray instances the
# tests start bind to 127.0.0.1 and never talk to another address.  Needs root (or
# unprivileged user namespaces); elsewhere the command runs as it is.
#
# Inside the namespace a second interface, dm0, holds the private address 10.251.0.1 (a
# dummy device; a bridge without ports where dummy devices are missing; else an extra address
# on lo), so a test can tell a server bound to loopback from one bound to every interface.
# The one route through it is to 8.8.8.8, the address Ray asks the kernel about to find a
# node's outward address: Ray then takes 10.251.0.1 for it, as it takes a machine's LAN
# address.  dm0 has no peer: no packet leaves the namespace, and every other destination
# fails at once as before.
setup='ip link set lo up || exit 1
if ! { { ip link add dm0 type dummy || ip link add dm0 type bridge; } &&
       ip addr add 10.251.0.1/24 dev dm0 && ip link set dm0 up && ip route add 8.8.8.8/32 dev dm0; } 2>/dev/null &&
   ! ip addr add 10.251.0.1/32 dev lo 2>/dev/null; then
    echo "loopback.sh: no private address in the namespace; loopback-only checks see less" >&2
fi
exec "$@"'
if unshare -n true 2>/dev/null; then
    exec unshare -n sh -c "$setup" sh "$@"
elif unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c "$setup" sh "$@"
else
    echo "loopback.sh: cannot make a network namespace; running without one" >&2
    exec "$@"
fi
