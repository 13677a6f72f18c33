//! Per-stack operation log: build and start output kept in memory (bounded) and streamable to
//! followers until the current operation ends. The [`LogBook`] holds every stack's log; the stack
//! manager and the registrator share it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_worker_api::ValidName;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::Notify;

/// Bytes kept per stack; older output is dropped first.
const CAP: usize = 1024 * 1024;

#[derive(Debug, Default)]
struct Inner {
    data: Vec<u8>,
    /// Absolute offset of `data[0]` in everything ever written.
    start: u64,
    active: bool,
    /// When the current operation began; lines carry the time since.
    since: Option<std::time::Instant>,
}

#[derive(Debug, Default)]
pub struct LogBuf {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl LogBuf {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Appends one line (a newline is added when missing).
    pub fn line(&self, text: &str) {
        let mut inner = self.inner.lock().expect("log lock");
        if let Some(since) = inner.since {
            let stamp = format!("[{:7.2}s] ", since.elapsed().as_secs_f64());
            inner.data.extend_from_slice(stamp.as_bytes());
        }
        inner.data.extend_from_slice(text.as_bytes());
        if !text.ends_with('\n') {
            inner.data.push(b'\n');
        }
        if inner.data.len() > CAP {
            let cut = inner.data.len() - CAP;
            inner.data.drain(..cut);
            inner.start += cut as u64;
        }
        drop(inner);
        self.notify.notify_waiters();
    }

    /// Marks an operation as running (followers wait) or ended (followers finish).
    pub fn set_active(&self, active: bool) {
        let mut inner = self.inner.lock().expect("log lock");
        inner.active = active;
        inner.since = active.then(std::time::Instant::now);
        drop(inner);
        self.notify.notify_waiters();
    }

    pub fn snapshot(&self) -> Bytes {
        Bytes::copy_from_slice(&self.inner.lock().expect("log lock").data)
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.inner.lock().expect("log lock").data).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Everything so far, then (with `follow`) new output until the operation ends.
    pub fn stream(
        self: Arc<Self>,
        follow: bool,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::unfold(
            (self, 0u64, false),
            move |(buf, mut offset, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let notified = buf.notify.notified();
                    {
                        let inner = buf.inner.lock().expect("log lock");
                        let end = inner.start + inner.data.len() as u64;
                        offset = offset.max(inner.start);
                        if offset < end {
                            let from = (offset - inner.start) as usize;
                            let chunk = Bytes::copy_from_slice(&inner.data[from..]);
                            return Some((Ok(chunk), (buf.clone(), end, false)));
                        }
                        if !follow || !inner.active {
                            return None;
                        }
                    }
                    notified.await;
                }
            },
        )
    }
}

/// The log of every stack, by id, shared by the stack manager (each operation's output) and the
/// registrator (the `SERVICE_*` variables it refused).
#[derive(Debug, Clone, Default)]
pub struct LogBook(Arc<Mutex<HashMap<String, Arc<LogBuf>>>>);

impl LogBook {
    /// The log of stack `id`, empty when new.
    pub fn get(&self, id: &ValidName) -> Arc<LogBuf> {
        self.0
            .lock()
            .expect("logs")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Forgets the log of stack `id` (once the stack is deleted).
    pub fn remove(&self, id: &ValidName) {
        self.0.lock().expect("logs").remove(id.as_str());
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn follow_ends_when_operation_ends() {
        let log = LogBuf::new();
        log.line("zero");
        log.set_active(true);
        log.line("one");
        let follower = tokio::spawn(
            log.clone()
                .stream(true)
                .map(|c| c.unwrap().to_vec())
                .concat(),
        );
        tokio::task::yield_now().await;
        log.line("two");
        log.set_active(false);
        let all = follower.await.unwrap();
        let all = String::from_utf8(all).unwrap();
        assert!(all.starts_with("zero\n["), "{all}");
        assert!(all.ends_with("s] two\n"), "{all}");
        let snapshot: Vec<Bytes> = log
            .clone()
            .stream(false)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(snapshot.concat(), all.as_bytes());
        assert!(log.tail(1).ends_with("s] two"));
    }
}
