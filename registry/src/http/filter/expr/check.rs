//! The check of a parsed expression against the answer's element type ([`Ty`]): selectors
//! must name fields, operators must suit the field, values are converted to the field's type.

use regex::Regex;

use super::{Expr, Lit, MAX_VALUE_LENGTH, Match, Op};
use crate::http::filter::schema::Ty;

fn quoted(path: &[String]) -> String {
    format!("{:?}", path.join("."))
}

pub(super) fn check(expr: &mut Expr, ty: Ty, count: &mut usize) -> Result<(), String> {
    match expr {
        Expr::Not(inner) => check(inner, ty, count),
        Expr::And(l, r) | Expr::Or(l, r) => {
            check(l, ty, count)?;
            check(r, ty, count)
        }
        Expr::Match(m) => {
            *count += 1;
            check_match(m, ty)
        }
    }
}

fn check_match(m: &mut Match, top: Ty) -> Result<(), String> {
    if let Some(Lit::Raw(raw)) = &m.value
        && raw.len() > MAX_VALUE_LENGTH
    {
        return Err(format!(
            "Value in expression with length {} for selector {} exceeds maximum length of",
            raw.len(),
            quoted(&m.selector)
        ));
    }
    let mut ty = top;
    for (i, part) in m.selector.iter().enumerate() {
        ty = match ty.field(part) {
            Some(next) => next,
            None => {
                return Err(format!(
                    "Selector {} is not valid",
                    quoted(&m.selector[..=i])
                ));
            }
        };
    }
    if !ty.operations().contains(&m.op) {
        return Err(format!(
            "Invalid match operator {:?} for selector {}",
            m.op.name(),
            quoted(&m.selector)
        ));
    }
    m.ty = ty;
    let Some(Lit::Raw(raw)) = &m.value else {
        return Ok(());
    };
    let coerce_err = |err: &str| {
        format!(
            "Failed to coerce value {raw:?} for selector {}: {err}",
            quoted(&m.selector)
        )
    };
    let converted = match ty.scalar() {
        Ty::Bool => Lit::Bool(go_bool(raw).ok_or_else(|| {
            coerce_err(&format!(
                "strconv.ParseBool: parsing {raw:?}: invalid syntax"
            ))
        })?),
        Ty::Int => Lit::Int(go_int(raw).ok_or_else(|| {
            coerce_err(&format!(
                "strconv.ParseInt: parsing {raw:?}: invalid syntax"
            ))
        })?),
        _ => Lit::Raw(raw.clone()),
    };
    m.value = Some(match (m.op, converted) {
        (Op::Matches | Op::NotMatches, Lit::Raw(pattern)) => {
            Lit::Regex(Regex::new(&pattern).map_err(|err| {
                let reason = err.to_string();
                let reason = reason.lines().last().unwrap_or("").trim();
                format!("Failed to compile regular expression {pattern:?}: error parsing regexp: {reason}")
            })?)
        }
        (_, other) => other,
    });
    Ok(())
}

/// Go's `strconv.ParseBool`.
fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(text, 0, 64)`: decimal, `0x`, `0o`/`0`, `0b` prefixes, `_` separators.
fn go_int(text: &str) -> Option<i64> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_owned())
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_owned())
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_owned())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned())
    } else {
        (10, lower.clone())
    };
    let digits = if radix != 10 {
        digits.replace('_', "")
    } else {
        digits
    };
    if digits.is_empty() {
        return None;
    }
    let magnitude = i128::from_str_radix(&digits, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}
