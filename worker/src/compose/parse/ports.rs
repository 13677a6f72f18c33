//! `ports` in short and long form, and the port, range and protocol rules `expose` shares.

use serde_yaml_ng::{Mapping, Value};

use super::super::model::PortSpec;
use super::Parser;

impl Parser<'_> {
    pub(super) fn ports(&mut self, service: &str, field: &str, v: &Value) -> Vec<PortSpec> {
        let mut out = Vec::new();
        let Some(seq) = v.as_sequence() else {
            self.err(Some(service), field, "must be a list");
            return out;
        };
        for item in seq {
            let parsed = match item {
                Value::Mapping(map) => self.long_port(service, field, map),
                other => match Self::scalar(other) {
                    Some(s) => parse_short_port(&s),
                    None => Err("must be a string or a mapping".to_owned()),
                },
            };
            match parsed {
                Ok(mut ports) => out.append(&mut ports),
                Err(reason) => self.err(Some(service), field, reason),
            }
        }
        out
    }

    fn long_port(
        &mut self,
        service: &str,
        field: &str,
        map: &Mapping,
    ) -> Result<Vec<PortSpec>, String> {
        let mut spec = PortSpec {
            host_ip: None,
            requested_host_port: None,
            container_port: 0,
            protocol: "tcp".to_owned(),
        };
        for (k, val) in map {
            let k = Self::scalar(k).unwrap_or_default();
            let v = Self::scalar(val).unwrap_or_default();
            match k.as_str() {
                "target" => spec.container_port = parse_port(&v)?,
                "published" => spec.requested_host_port = Some(parse_port(&v)?),
                "host_ip" => spec.host_ip = Some(v),
                "protocol" => spec.protocol = v,
                "mode" if v == "host" || v == "ingress" => {}
                "name" | "app_protocol" => {}
                _ => self.err(Some(service), format!("{field}.{k}"), "unsupported key"),
            }
        }
        if spec.container_port == 0 {
            return Err("long-form port needs `target`".to_owned());
        }
        check_protocol(&spec.protocol)?;
        Ok(vec![spec])
    }
}

pub(super) fn check_protocol(p: &str) -> Result<(), String> {
    if p == "tcp" || p == "udp" {
        Ok(())
    } else {
        Err(format!("unsupported protocol {p:?}"))
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port {s:?}")),
    }
}

pub(super) fn parse_range(s: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            if a > b {
                return Err(format!("invalid port range {s:?}"));
            }
            Ok((a, b))
        }
        None => parse_port(s).map(|p| (p, p)),
    }
}

/// Short port syntax: `[ip:][host[-host]:]container[-container][/proto]`.
pub(crate) fn parse_short_port(s: &str) -> Result<Vec<PortSpec>, String> {
    let (spec, protocol) = s.rsplit_once('/').unwrap_or((s, "tcp"));
    check_protocol(protocol)?;
    // An IPv6 host ip is bracketed: `[::1]:80:80`.
    let (host_ip, rest) = if let Some(after) = spec.strip_prefix('[') {
        let (ip, rest) = after
            .split_once("]:")
            .ok_or_else(|| format!("invalid port {s:?}"))?;
        (Some(ip.to_owned()), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0].to_owned()), &spec[parts[0].len() + 1..]),
            _ => return Err(format!("invalid port {s:?}")),
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest),
    };
    let (c0, c1) = parse_range(container)?;
    let host = match host {
        Some("") | None => None,
        Some(h) => Some(parse_range(h)?),
    };
    if let Some((h0, h1)) = host
        && h1 - h0 != c1 - c0
        && h0 != h1
    {
        return Err(format!(
            "host and container port ranges differ in size in {s:?}"
        ));
    }
    Ok((c0..=c1)
        .enumerate()
        .map(|(i, c)| PortSpec {
            host_ip: host_ip.clone().filter(|ip| !ip.is_empty()),
            requested_host_port: host.map(|(h0, h1)| if h0 == h1 { h0 } else { h0 + i as u16 }),
            container_port: c,
            protocol: protocol.to_owned(),
        })
        .collect())
}
