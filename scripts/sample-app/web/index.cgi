#!/bin/sh
# Answers with what the api service says, fetched over the stack network by service name, and
# with the public address berth gave this container before it started.
# One line per request in the app's log (stderr reaches the container's log).
echo "$REMOTE_ADDR asked for $REQUEST_URI" >&2
printf 'Content-Type: text/plain\r\n\r\n'
printf 'api says: %s\n' "$(wget -q -O - "$API_URL" 2>&1)"
printf 'public address: %s\n' "${BERTH_PUBLIC_ADDR_8000:-unknown}"
