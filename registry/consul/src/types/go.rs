//! serde helpers for Go's JSON encoding: `null` for empty slices and maps, base64 for `[]byte`.

use serde::{Deserialize, Deserializer};

/// Deserialises `null` as the type's default (Go encodes empty slices and maps as `null`).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An optional Go duration given as text (`"10s"`) or as a number of nanoseconds (`10000000000`),
/// as Consul's agent takes both; a number is turned into its Go text (`10s`). `null` is absent.
pub(crate) fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(serde_json::Value::Number(n)) => {
            let nanos = n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("time: invalid duration \"{n}\""))
                })?;
            Ok(Some(crate::duration::go_duration(
                std::time::Duration::from_nanos(nanos),
            )))
        }
        Some(other) => Err(serde::de::Error::custom(format!(
            "json: cannot unmarshal {} into Go value of type time.Duration",
            match other {
                serde_json::Value::Bool(_) => "bool",
                serde_json::Value::Array(_) => "array",
                _ => "object",
            }
        ))),
    }
}

/// `Option<Vec<u8>>` as a base64 string or `null` (Go's `[]byte`).
pub(crate) mod base64_opt {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) if !bytes.is_empty() => s.serialize_str(&BASE64.encode(bytes)),
            _ => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => BASE64
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|err| serde::de::Error::custom(format!("illegal base64 data: {err}"))),
        }
    }
}
