//! The agent's node ID: kept in `<data-dir>/node-id` (as Consul does) so a restarted agent is
//! the same member; the server tells two agents with the same node name apart by it.

use std::path::{Path, PathBuf};

/// The node ID file cannot be read or written, or holds no UUID.
#[derive(Debug, thiserror::Error)]
#[error("node ID file {}: {reason}", .path.display())]
pub struct NodeIdError {
    path: PathBuf,
    reason: String,
}

/// The ID in `<dir>/node-id`, written there first if the file does not exist; without a
/// directory, a new ID (for this process only).
pub(crate) fn load_or_create(dir: Option<&Path>) -> Result<String, NodeIdError> {
    let Some(dir) = dir else {
        return Ok(uuid::Uuid::new_v4().to_string());
    };
    let path = dir.join("node-id");
    let failed = |reason: String| NodeIdError {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => uuid::Uuid::parse_str(text.trim())
            .map(|id| id.to_string())
            .map_err(|e| failed(format!("not a UUID ({e})"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, &id))
                .map_err(|e| failed(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        let first = load_or_create(Some(&data)).unwrap();
        assert!(uuid::Uuid::parse_str(&first).is_ok());
        assert_eq!(load_or_create(Some(&data)).unwrap(), first);
        assert_ne!(load_or_create(None).unwrap(), load_or_create(None).unwrap());
        std::fs::write(data.join("node-id"), "not-an-id\n").unwrap();
        let err = load_or_create(Some(&data)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "node ID file {}: not a UUID",
                data.join("node-id").display()
            )),
            "{err}"
        );
    }
}
