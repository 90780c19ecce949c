#!/bin/sh
# Run a command in a network namespace that has only loopback, so the Ray instances the
# tests start bind to 127.0.0.1 and never talk to another address.  Needs root (or
# unprivileged user namespaces); elsewhere the command runs as it is.
if unshare -n true 2>/dev/null; then
    exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
elif unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c 'ip link set lo up && exec "$@"' sh "$@"
else
    echo "loopback.sh: cannot make a network namespace; running without one" >&2
    exec "$@"
fi
