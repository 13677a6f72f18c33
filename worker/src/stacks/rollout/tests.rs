//! Which services roll start-first.

use super::*;

#[test]
fn only_services_that_can_run_twice_roll_start_first() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  api:\n    image: b\n  one:\n    image: b\n    x-berth-rollout: stop-first\n  two:\n    image: b\n    deploy:\n      update_config:\n        order: stop-first\n  three:\n    image: b\n    x-berth-rollout: start-first\n    deploy: {update_config: {order: stop-first}}\n  web:\n    image: b\n    ports: [\"80\"]\n  db:\n    image: b\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {}\n",
    )
    .unwrap();
    let project = crate::compose::load(dir.path(), "b1").unwrap();
    let first = |name: &str, held| start_first(project.service(name).unwrap(), held);
    assert!(first("api", false));
    assert!(!first("one", false));
    assert!(!first("two", false), "deploy.update_config.order");
    assert!(first("three", false), "x-berth-rollout wins");
    assert!(!first("web", false));
    assert!(first("web", true), "a forwarder holds its port");
    assert!(!first("db", false));
    assert!(!first("db", true));
    assert_eq!(aside_name("b1", "web"), "b1-web-1-old");
}
