//! The Go-compatible request decoder: Consul's JSON decoding rules over the wire types of
//! [`crate::dto`]. Keys match field names case-insensitively (and as snake_case), unknown fields
//! are refused, an array never fills a struct; the error texts are Consul's.

use serde::de::DeserializeOwned;

/// Decodes a request body like Consul does: keys match field names case-insensitively (and
/// snake_case aliases such as `service_id`), unknown fields are rejected. The error text is the
/// one Consul answers with status 400.
pub(crate) fn decode_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| format!("Request decode failed: {err}"))?;
    normalise_keys(&mut value, &REQUEST);
    T::deserialize(strict::Strict(value)).map_err(|err| {
        let text = err.to_string();
        match text
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
        {
            Some((name, _)) => format!("Request decode failed: json: unknown field \"{name}\""),
            None => format!("Request decode failed: {text}"),
        }
    })
}

/// A JSON value as a deserializer that, like Go's decoder, refuses an array where an object is
/// expected: serde on its own fills a struct's fields from an array by position.
mod strict {
    use serde::de::value::StringDeserializer;
    use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer as _, Visitor};
    use serde_json::{Error, Map, Value};

    pub(super) struct Strict(pub(super) Value);

    /// The Consul type a request struct stands for, as Go's decoder names it in errors.
    fn go_type(name: &str) -> &str {
        match name {
            "SessionCreateRequest" => "structs.Session",
            "CatalogRegistration" => "structs.RegisterRequest",
            "CatalogDeregistration" => "structs.DeregisterRequest",
            "CatalogServiceRegistration" => "structs.NodeService",
            "CatalogCheckRegistration" => "structs.HealthCheck",
            "AgentServiceRegistration" => "structs.ServiceDefinition",
            "AgentCheckRegistration" => "structs.CheckDefinition",
            "TxnOp" => "api.TxnOp",
            "TxnKvOp" => "api.KVTxnOp",
            other => other,
        }
    }

    impl<'de> Deserializer<'de> for Strict {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                Value::Array(items) => {
                    let len = items.len();
                    let mut seq = Seq(items.into_iter());
                    let value = visitor.visit_seq(&mut seq)?;
                    match seq.0.len() {
                        0 => Ok(value),
                        _ => Err(de::Error::invalid_length(len, &"fewer elements in array")),
                    }
                }
                Value::Object(map) => {
                    let len = map.len();
                    let mut entries = Entries {
                        iter: map.into_iter(),
                        value: None,
                    };
                    let value = visitor.visit_map(&mut entries)?;
                    match entries.iter.len() {
                        0 => Ok(value),
                        _ => Err(de::Error::invalid_length(len, &"fewer elements in map")),
                    }
                }
                scalar => scalar.deserialize_any(visitor),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                Value::Null => visitor.visit_none(),
                _ => visitor.visit_some(self),
            }
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.0 {
                Value::Array(_) => Err(de::Error::custom(format!(
                    "json: cannot unmarshal array into Go value of type {}",
                    go_type(name)
                ))),
                Value::Object(map) => {
                    Strict(Value::Object(go_fields(map, fields))).deserialize_any(visitor)
                }
                other => Strict(other).deserialize_any(visitor),
            }
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.0.deserialize_enum(name, variants, visitor)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
        }
    }

    /// An object's keys as Go's decoder matches them to a struct's fields, at any depth: a key
    /// equal to a field name ignoring case (and underscores, for Consul's snake_case aliases) is
    /// that field; a `null` leaves the field as it is, so it counts as absent.
    fn go_fields(map: Map<String, Value>, fields: &'static [&'static str]) -> Map<String, Value> {
        map.into_iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| {
                if fields.contains(&key.as_str()) {
                    return (key, value);
                }
                let folded: String = key.chars().filter(|c| *c != '_').collect();
                let name = fields
                    .iter()
                    .find(|field| field.eq_ignore_ascii_case(&folded))
                    .map_or(key, |field| (*field).to_owned());
                (name, value)
            })
            .collect()
    }

    struct Seq(std::vec::IntoIter<Value>);

    impl<'de> de::SeqAccess<'de> for Seq {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            self.0
                .next()
                .map(|item| seed.deserialize(Strict(item)))
                .transpose()
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.0.len())
        }
    }

    struct Entries {
        iter: <Map<String, Value> as IntoIterator>::IntoIter,
        value: Option<Value>,
    }

    impl<'de> de::MapAccess<'de> for Entries {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some((key, value)) = self.iter.next() else {
                return Ok(None);
            };
            self.value = Some(value);
            let key: StringDeserializer<Error> = key.into_deserializer();
            seed.deserialize(key).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            match self.value.take() {
                Some(value) => seed.deserialize(Strict(value)),
                None => Err(de::Error::custom("value is missing")),
            }
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.iter.len())
        }
    }
}

/// Every field name a request type uses, in its canonical spelling.
const CANONICAL_FIELDS: &[&str] = &[
    "Address",
    "Args",
    "Behavior",
    "Body",
    "Check",
    "CheckID",
    "Checks",
    "CreateIndex",
    "Datacenter",
    "DeregisterCriticalServiceAfter",
    "Definition",
    "EnableTagOverride",
    "FailuresBeforeCritical",
    "Flags",
    "HTTP",
    "Header",
    "ID",
    "Index",
    "Interval",
    "Key",
    "Kind",
    "KV",
    "LockDelay",
    "Meta",
    "Method",
    "ModifyIndex",
    "Name",
    "Namespace",
    "Node",
    "NodeChecks",
    "NodeMeta",
    "Notes",
    "Output",
    "Partition",
    "Passing",
    "Port",
    "Service",
    "ServiceChecks",
    "ServiceID",
    "Session",
    "SkipNodeUpdate",
    "Status",
    "SuccessBeforePassing",
    "TCP",
    "TLSSkipVerify",
    "TTL",
    "Tags",
    "Type",
    "TaggedAddresses",
    "Timeout",
    "Value",
    "Verb",
    "Warning",
    "Weights",
];

/// Fields whose values are free-form maps: their keys belong to the user and stay as sent.
const FREE_FORM_FIELDS: &[&str] = &[
    "Meta",
    "NodeMeta",
    "TaggedAddresses",
    "Header",
    "Definition",
];

/// Field names of the ACL bodies (tokens, policies); clients such as py-consul send some in
/// lowercase.
const ACL_FIELDS: &[&str] = &[
    "AccessorID",
    "SecretID",
    "Description",
    "Policies",
    "Local",
    "CreateTime",
    "Hash",
    "CreateIndex",
    "ModifyIndex",
    "ID",
    "Name",
    "Rules",
    "Datacenters",
    "Roles",
    "ServiceIdentities",
    "NodeIdentities",
    "TemplatedPolicies",
    "ServiceName",
    "NodeName",
    "Datacenter",
    "AuthMethod",
    "ExpirationTime",
    "ExpirationTTL",
    "TemplateName",
    "TemplateVariables",
    "Type",
    "DisplayName",
    "Config",
    "MaxTokenTTL",
    "TokenLocality",
    "TokenNameFormat",
    "Selector",
    "BindType",
    "BindName",
    "BindVars",
    "BearerToken",
    "Meta",
];

/// ACL fields whose values are maps of the client's own keys (an auth method's
/// configuration, a binding's variables, a login's metadata).
const ACL_FREE_FORM: &[&str] = &["Config", "BindVars", "Meta"];

/// How one family of request bodies spells its fields.
struct Fields {
    /// Canonical field names; a key matching one case-insensitively (underscores ignored) is
    /// renamed to it.
    names: &'static [&'static str],
    /// Fields whose values are free-form maps, left as sent.
    free_form: &'static [&'static str],
    /// Whether a `null` counts as absent (dropped) rather than as a value.
    drop_nulls: bool,
}

const REQUEST: Fields = Fields {
    names: CANONICAL_FIELDS,
    free_form: FREE_FORM_FIELDS,
    drop_nulls: false,
};

const ACL: Fields = Fields {
    names: ACL_FIELDS,
    free_form: ACL_FREE_FORM,
    drop_nulls: true,
};

/// The one key canonicalizer: renames every object key to its canonical spelling in `fields`.
fn normalise_keys(value: &mut serde_json::Value, fields: &Fields) {
    match value {
        serde_json::Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut inner) in entries {
                if fields.drop_nulls && inner.is_null() {
                    continue;
                }
                let folded: String = key.chars().filter(|c| *c != '_').collect();
                let name = fields
                    .names
                    .iter()
                    .find(|name| name.eq_ignore_ascii_case(&folded))
                    .map_or(key, |name| (*name).to_owned());
                if !fields.free_form.contains(&name.as_str()) {
                    normalise_keys(&mut inner, fields);
                }
                map.insert(name, inner);
            }
        }
        serde_json::Value::Array(items) => {
            items
                .iter_mut()
                .for_each(|item| normalise_keys(item, fields));
        }
        _ => {}
    }
}

/// Decodes an ACL body (token, policy) as Consul does: keys canonicalized, a `null` counts as
/// absent; unknown fields are ignored.
pub(crate) fn decode_acl<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    normalise_keys(&mut value, &ACL);
    serde_json::from_value(value).map_err(|e| format!("Request decode failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto::{
        AgentServiceRegistration, CatalogRegistration, SessionCreateRequest, TxnKvOp, TxnOp,
    };

    #[test]
    fn request_keys_are_case_insensitive_and_strict() {
        let req: SessionCreateRequest =
            decode_request(br#"{"name":"a","ttl":"10s","node_checks":["serfHealth"]}"#).unwrap();
        assert_eq!(req.name.as_deref(), Some("a"));
        assert_eq!(req.ttl.as_deref(), Some("10s"));
        assert_eq!(req.node_checks, Some(vec!["serfHealth".to_owned()]));
        let err = decode_request::<SessionCreateRequest>(br#"{"Bogus":1}"#).unwrap_err();
        assert_eq!(err, r#"Request decode failed: json: unknown field "Bogus""#);
        assert!(
            decode_request::<SessionCreateRequest>(b"{")
                .unwrap_err()
                .starts_with("Request decode failed")
        );
        let reg: AgentServiceRegistration =
            decode_request(br#"{"name":"web","meta":{"version":"1"},"check":{"ttl":"10s","deregister_critical_service_after":"1m"}}"#)
                .unwrap();
        assert_eq!(reg.meta.get("version").map(String::as_str), Some("1"));
        assert_eq!(
            reg.check
                .unwrap()
                .deregister_critical_service_after
                .as_deref(),
            Some("1m")
        );
    }

    #[test]
    fn arrays_never_fill_structs() {
        for body in [r#"["x","myname","vm","5s","delete"]"#, "[null]", "[]"] {
            assert_eq!(
                decode_request::<SessionCreateRequest>(body.as_bytes()).unwrap_err(),
                "Request decode failed: json: cannot unmarshal array into Go value of type structs.Session",
                "{body}"
            );
        }
        assert_eq!(
            decode_request::<Vec<TxnOp>>(br#"[{"KV":["set","posk"]}]"#).unwrap_err(),
            "Request decode failed: json: cannot unmarshal array into Go value of type api.KVTxnOp"
        );
        // arrays where the type has a list, and everything else, decode as before
        let ops: Vec<TxnOp> =
            decode_request(br#"[{"kv":{"verb":"set","key":"k","value":"YQ==","flags":7}}]"#)
                .unwrap();
        assert_eq!(
            ops[0].kv.as_ref().unwrap().value.as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(ops[0].kv.as_ref().unwrap().flags, Some(7));
        let req: SessionCreateRequest = decode_request(
            br#"{"LockDelay":15,"ServiceChecks":[{"ID":"c"}],"NodeChecks":null,"TTL":"10s"}"#,
        )
        .unwrap();
        assert_eq!(req.lock_delay, Some(serde_json::json!(15)));
        assert_eq!(req.service_checks.unwrap()[0].id, "c");
        assert_eq!(req.node_checks, None);
        let reg: CatalogRegistration = decode_request(
            br#"{"Node":"n","Address":"a","NodeMeta":{"k":"v"},"Checks":null,"Check":{"CheckID":"c","Definition":{"HTTP":"x","list":[1,"a",null]}}}"#,
        )
        .unwrap();
        assert_eq!(reg.node_meta.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            reg.check.unwrap().definition,
            Some(serde_json::json!({"HTTP":"x","list":[1,"a",null]}))
        );
        // type errors read as before
        assert_eq!(
            decode_request::<TxnKvOp>(br#"{"Verb":"set","Flags":"x"}"#).unwrap_err(),
            r#"Request decode failed: invalid type: string "x", expected u64"#
        );
    }
}
