//! KV wire types: `GET /v1/kv/<key>` entries.

use serde::{Deserialize, Serialize};

use super::go::base64_opt;

/// One KV entry as `GET /v1/kv/<key>` returns it; `Value` is base64 and `null` when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    #[serde(default)]
    pub lock_index: u64,
    pub key: String,
    #[serde(default)]
    pub flags: u64,
    #[serde(default, with = "base64_opt")]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_entry_value_is_base64_and_null_when_empty() {
        let entry = KvEntry {
            lock_index: 0,
            key: "k".into(),
            flags: 0,
            value: Some(Vec::new()),
            create_index: 1,
            modify_index: 1,
            session: None,
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains(r#""Value":null"#), "{json}");
        assert!(!json.contains("Session"));
        let entry = KvEntry {
            value: Some(b"hi".to_vec()),
            ..entry
        };
        let back: KvEntry = serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(back, entry);
    }
}
