//! A service's `volumes` in short and long form: bind, named and anonymous sources.

use serde_yaml_ng::{Mapping, Value};

use super::super::model::{Mount, MountSource};
use super::Parser;

impl Parser<'_> {
    pub(super) fn mounts(&mut self, service: &str, field: &str, v: &Value) -> Vec<Mount> {
        let mut out = Vec::new();
        let Some(seq) = v.as_sequence() else {
            self.err(Some(service), field, "must be a list");
            return out;
        };
        for item in seq {
            let mount = match item {
                Value::String(s) => self.short_mount(s),
                Value::Mapping(map) => self.long_mount(service, field, map),
                _ => Err("must be a string or a mapping".to_owned()),
            };
            match mount {
                Ok(m) => out.push(m),
                Err(reason) => self.err(Some(service), field, reason),
            }
        }
        out
    }

    fn source(&self, src: &str) -> MountSource {
        if src.starts_with('.') || src.starts_with('/') || src.starts_with('~') {
            MountSource::Bind(self.dir.join(src))
        } else {
            MountSource::Named(src.to_owned())
        }
    }

    fn short_mount(&self, s: &str) -> Result<Mount, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [target] => (MountSource::Anonymous, *target, None),
            [src, target] => (self.source(src), *target, None),
            [src, target, mode] => (self.source(src), *target, Some(*mode)),
            _ => return Err(format!("cannot parse volume {s:?}")),
        };
        let mut read_only = false;
        if let Some(mode) = mode {
            for opt in mode.split(',') {
                match opt {
                    "ro" => read_only = true,
                    "rw" | "z" | "Z" | "nocopy" => {}
                    other => return Err(format!("unsupported volume option {other:?}")),
                }
            }
        }
        if !target.starts_with('/') {
            return Err(format!("volume target {target:?} must be an absolute path"));
        }
        Ok(Mount {
            source,
            target: target.to_owned(),
            read_only,
        })
    }

    fn long_mount(&mut self, service: &str, field: &str, map: &Mapping) -> Result<Mount, String> {
        let mut kind = String::from("volume");
        let mut source = None;
        let mut target = None;
        let mut read_only = false;
        for (k, val) in map {
            let k = Self::scalar(k).unwrap_or_default();
            match k.as_str() {
                "type" => kind = Self::scalar(val).unwrap_or_default(),
                "source" => source = Self::scalar(val),
                "target" => target = Self::scalar(val),
                "read_only" => {
                    read_only = self.boolean(service, &format!("{field}.read_only"), val)
                }
                _ => self.err(Some(service), format!("{field}.{k}"), "unsupported key"),
            }
        }
        let target = target.ok_or("long-form volume needs `target`")?;
        let source = match (kind.as_str(), source) {
            ("bind", Some(src)) => MountSource::Bind(self.dir.join(src)),
            ("volume", Some(src)) => MountSource::Named(src),
            ("volume", None) => MountSource::Anonymous,
            (other, _) => return Err(format!("unsupported volume type {other:?}")),
        };
        Ok(Mount {
            source,
            target,
            read_only,
        })
    }
}
