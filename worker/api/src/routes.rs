//! Every route of the worker API, defined once: the `const` patterns (axum's `{id}` syntax) that
//! the worker's router and any stand-in worker serve, and the `fn` builders the client calls,
//! made from the same patterns. What each route takes and answers is in [`crate::types`].

use crate::ValidName;

/// `GET` (`?challenge=`): [`WorkerHealth`](crate::WorkerHealth), unsigned; with a challenge the
/// answer carries the worker's proof ([`crate::auth`]).
pub const HEALTHZ: &str = "/healthz";
/// `GET`: every stack the worker holds.
pub const STACKS: &str = "/v1/stacks";
/// `GET` (status) and `DELETE` (`?keep_volumes=`) of one stack.
pub const STACK: &str = "/v1/stacks/{id}";
/// `POST`: build a commit.
pub const STACK_BUILD: &str = "/v1/stacks/{id}/build";
/// `POST`: start the built stack.
pub const STACK_START: &str = "/v1/stacks/{id}/start";
/// `POST`: roll the running stack to a commit.
pub const STACK_DEPLOY: &str = "/v1/stacks/{id}/deploy";
/// `POST`: stop the stack.
pub const STACK_STOP: &str = "/v1/stacks/{id}/stop";
/// `GET` ([`LogQuery`](crate::LogQuery)): operation or app output.
pub const STACK_LOGS: &str = "/v1/stacks/{id}/logs";

/// The query parameter of [`STACK`]'s `DELETE`.
pub const KEEP_VOLUMES: &str = "keep_volumes";
/// The query parameter of [`HEALTHZ`].
pub const CHALLENGE: &str = "challenge";

/// `pattern` with its `{id}` filled in (ids are URL-safe by their rule).
fn fill(pattern: &str, id: &ValidName) -> String {
    pattern.replace("{id}", id.as_str())
}

pub fn stack(id: &ValidName) -> String {
    fill(STACK, id)
}

pub fn build(id: &ValidName) -> String {
    fill(STACK_BUILD, id)
}

pub fn start(id: &ValidName) -> String {
    fill(STACK_START, id)
}

pub fn deploy(id: &ValidName) -> String {
    fill(STACK_DEPLOY, id)
}

pub fn stop(id: &ValidName) -> String {
    fill(STACK_STOP, id)
}

pub fn logs(id: &ValidName) -> String {
    fill(STACK_LOGS, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_the_patterns() {
        let id = ValidName::parse("id", "shop-1.v2").unwrap();
        assert_eq!(stack(&id), "/v1/stacks/shop-1.v2");
        assert_eq!(build(&id), "/v1/stacks/shop-1.v2/build");
        assert_eq!(start(&id), "/v1/stacks/shop-1.v2/start");
        assert_eq!(stop(&id), "/v1/stacks/shop-1.v2/stop");
        assert_eq!(deploy(&id), "/v1/stacks/shop-1.v2/deploy");
        assert_eq!(logs(&id), "/v1/stacks/shop-1.v2/logs");
        for p in [
            STACKS,
            STACK,
            STACK_BUILD,
            STACK_START,
            STACK_STOP,
            STACK_DEPLOY,
            STACK_LOGS,
        ] {
            assert!(p.starts_with("/v1/stacks"), "{p}");
        }
    }
}
