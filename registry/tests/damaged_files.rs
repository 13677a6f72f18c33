//! Issue 14, findings 9 and 10, against the real binary: a data directory whose store file was
//! emptied or removed, a store file with a flipped byte in a stored value, and a damaged
//! `acl.json` each stop the server at start with an error naming the file, instead of starting
//! as an empty store, serving the damaged value, or a bare JSON error. (After a SIGKILL, redb's
//! repair takes a damaged last commit for a torn write and falls back to the one before: see
//! the note of issue 14.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{BIN, NODE, free_port};

const VALUE: &[u8] = b"precious-value-0123456789-precious-value";

/// A data directory where a server with ACLs on stored [`VALUE`] under `k` and stopped cleanly.
async fn stored() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = server(dir.path(), port).spawn().unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/kv/k");
    let mut stored = false;
    for _ in 0..200 {
        let put = http
            .put(&url)
            .header("X-Consul-Token", "root")
            .body(VALUE)
            .send();
        if put.await.is_ok_and(|r| r.status().is_success()) {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "the server never stored the value");
    let pid = child.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(term.unwrap().success());
    let stopped = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    assert!(stopped.unwrap().unwrap().success(), "no clean stop");
    dir
}

/// The server with ACLs on (so `acl.json` is read) on `dir`.
fn server(dir: &Path, port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["server", "--node-name", NODE, "--acl-master-token", "root"])
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the server on `dir` and expects it to exit on its own with an error: its output.
async fn refused(dir: &Path) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), server(dir, free_port()).output())
        .await
        .expect("the server started on damaged data and kept running")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "exited 0: {text}");
    // What the server said it stopped for (its log lines before are no explanation).
    let error = text.lines().find(|l| l.starts_with("Error:"));
    error
        .unwrap_or_else(|| panic!("no error line: {text}"))
        .to_owned()
}

#[tokio::test]
async fn empty_and_missing_store_files_are_refused_naming_the_file() {
    let dir = stored().await;
    let file = dir.path().join("registry.redb");
    std::fs::write(&file, b"").unwrap();
    let text = refused(dir.path()).await;
    assert!(text.contains("registry.redb"), "{text}");
    std::fs::remove_file(&file).unwrap();
    let text = refused(dir.path()).await;
    assert!(text.contains("registry.redb"), "{text}");
}

#[tokio::test]
async fn damaged_store_value_is_refused_not_served() {
    let dir = stored().await;
    let file = dir.path().join("registry.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(VALUE.len())
        .rposition(|w| w == VALUE)
        .expect("the value is stored as is");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let text = refused(dir.path()).await;
    assert!(text.contains("registry.redb"), "{text}");
    assert!(text.to_lowercase().contains("corrupt"), "{text}");
}

#[tokio::test]
async fn damaged_acl_json_is_refused_naming_the_file() {
    let dir = stored().await;
    std::fs::write(dir.path().join("acl.json"), b"{\"tokens\": [").unwrap();
    let text = refused(dir.path()).await;
    assert!(text.contains("acl.json"), "{text}");
}
