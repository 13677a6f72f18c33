//! berth-worker: The berth worker: builds and runs compose stacks through the Docker Engine API.
