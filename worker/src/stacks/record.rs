//! The record of a stack: what the worker remembers between operations and restarts, in
//! `<data>/stacks/<id>/state.json` (written atomically and fsynced, `berth_kit::fs::write_atomic`),
//! and the guard that marks a stack failed when an operation ends without recording its outcome.

use std::collections::BTreeMap;

use berth_worker_api::{StackState, ValidName};
use serde::{Deserialize, Serialize};

use super::{StackError, Stacks, io};

/// Marks a stack failed when an operation ends with its transient state still recorded (a
/// panic, or an error before the outcome was written), so no stack stays `building`,
/// `starting` or `stopping`.
pub(super) struct Unfinished<'a> {
    stacks: &'a Stacks,
    id: ValidName,
    state: StackState,
    what: &'static str,
}

impl<'a> Unfinished<'a> {
    pub(super) fn new(
        stacks: &'a Stacks,
        id: &ValidName,
        state: StackState,
        what: &'static str,
    ) -> Self {
        Self {
            stacks,
            id: id.clone(),
            state,
            what,
        }
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Ok(Some(mut record)) = self.stacks.read_record(&self.id)
            && record.state == self.state
        {
            record.state = StackState::Failed;
            record.error = Some(format!("the {} did not finish (internal error)", self.what));
            if let Err(e) = self.stacks.write_record(&record) {
                tracing::error!(instance = %self.id, cause = %e, "cannot record a failed {}", self.what);
            }
        }
    }
}

/// What the worker remembers of a stack between operations and restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: ValidName,
    pub state: StackState,
    pub commit: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// `service/port/proto` -> host port, kept so endpoints survive stop/start.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Commits built here whose images are kept, newest first (at most `--keep-releases`).
    #[serde(default)]
    pub releases: Vec<String>,
    /// The release the stack's containers run: set by a start and by a finished or undone
    /// rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// The rollout under way, written before it changes a container and cleared when it ends;
    /// one found with the stack's lock free was interrupted (`tidy.rs` resolves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::tidy::RolloutNote>,
}

impl Stacks {
    pub fn read_record(&self, id: &ValidName) -> Result<Option<Record>, StackError> {
        let path = self.stack_dir(id).join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StackError::Io {
                    context: format!("reading {}", path.display()),
                    source: std::io::Error::other(e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    pub(super) fn write_record(&self, record: &Record) -> Result<(), StackError> {
        let dir = self.stack_dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let json = serde_json::to_vec_pretty(record).expect("record serialises");
        berth_kit::fs::write_atomic(&dir.join("state.json"), &json).map_err(io("writing state"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bollard::Docker;

    use super::*;
    use crate::logbuf::LogBook;
    use crate::policy::Policy;
    use crate::stacks::Settings;

    #[test]
    fn an_unfinished_operation_leaves_the_stack_failed() {
        let data = tempfile::tempdir().unwrap();
        let stacks = Stacks::new(
            Docker::connect_with_local_defaults().unwrap(),
            Settings {
                data_dir: data.path().to_path_buf(),
                node: "n1".into(),
                advertise: "127.0.0.1".into(),
                publish_address: "127.0.0.1".into(),
                policy: Policy::default(),
                build_timeout: Duration::from_secs(1),
                start_timeout: Duration::from_secs(1),
                build_parallelism: 1,
                keep_releases: 3,
                builder: Default::default(),
                forwarder_bin: None,
            },
            LogBook::default(),
        );
        let id = ValidName::parse("id", "s1").unwrap();
        let record = |state| Record {
            id: id.clone(),
            state,
            commit: None,
            error: None,
            ports: BTreeMap::new(),
            releases: Vec::new(),
            running: None,
            rollout: None,
        };
        // A panic while starting (the audit's `timeout_secs` overflow was one).
        stacks.write_record(&record(StackState::Starting)).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _unfinished = Unfinished::new(&stacks, &id, StackState::Starting, "start");
            panic!("overflow when adding duration to instant");
        }));
        assert!(panicked.is_err());
        let after = stacks.read_record(&id).unwrap().unwrap();
        assert_eq!(after.state, StackState::Failed);
        assert_eq!(
            after.error.as_deref(),
            Some("the start did not finish (internal error)")
        );
        // An operation that recorded its outcome is left alone.
        stacks.write_record(&record(StackState::Running)).unwrap();
        drop(Unfinished::new(&stacks, &id, StackState::Starting, "start"));
        assert_eq!(
            stacks.read_record(&id).unwrap().unwrap().state,
            StackState::Running
        );
    }
}
