#!/bin/sh
# Answers with what the api service says, fetched over the stack network by service name, and
# with the public address berth gave this container before it started.
printf 'Content-Type: text/plain\r\n\r\n'
printf 'api says: %s\n' "$(wget -q -O - "$API_URL" 2>&1)"
printf 'public address: %s\n' "${BERTH_PUBLIC_ADDR_8000:-unknown}"
