//! Running a checked expression over one answer element's wire JSON.

use serde_json::Value;

use super::{Expr, Lit, Match, Op};
use crate::http::filter::schema::Ty;

pub(super) fn eval(expr: &Expr, datum: &Value, ty: Ty) -> bool {
    match expr {
        Expr::Not(inner) => !eval(inner, datum, ty),
        Expr::And(l, r) => eval(l, datum, ty) && eval(r, datum, ty),
        Expr::Or(l, r) => eval(l, datum, ty) || eval(r, datum, ty),
        Expr::Match(m) => eval_match(m, 0, datum, ty),
    }
}

fn eval_match(m: &Match, depth: usize, value: &Value, ty: Ty) -> bool {
    if depth >= m.selector.len() {
        return leaf(m, value);
    }
    match ty {
        Ty::Struct(_) => {
            let name = &m.selector[depth];
            let next = ty.field(name).unwrap_or(Ty::Str);
            let field = value.get(name.as_str()).unwrap_or(&Value::Null);
            eval_match(m, depth + 1, field, next)
        }
        // Slices are looked through: a match on any element is a match.
        Ty::List(elem) => value
            .as_array()
            .is_some_and(|items| items.iter().any(|item| eval_match(m, depth, item, *elem))),
        Ty::StrMap | Ty::Map(_) | Ty::StrListMap => {
            let next = ty.field("").unwrap_or(Ty::Str);
            match value.get(m.selector[depth].as_str()) {
                Some(found) => eval_match(m, depth + 1, found, next),
                None => m.op.when_absent(),
            }
        }
        _ => false,
    }
}

fn leaf(m: &Match, value: &Value) -> bool {
    let positive = match m.op {
        Op::Equal | Op::NotEqual => equal(m.value.as_ref(), value),
        Op::In | Op::NotIn => contains(m, value),
        Op::IsEmpty | Op::IsNotEmpty => match value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        },
        Op::Matches | Op::NotMatches => match (&m.value, value) {
            (Some(Lit::Regex(re)), Value::String(s)) => re.is_match(s),
            (Some(Lit::Regex(re)), Value::Null) => re.is_match(""),
            _ => false,
        },
    };
    match m.op {
        Op::Equal | Op::In | Op::IsEmpty | Op::Matches => positive,
        _ => !positive,
    }
}

fn equal(lit: Option<&Lit>, value: &Value) -> bool {
    match (lit, value) {
        (Some(Lit::Raw(s)), Value::String(v)) => s == v,
        (Some(Lit::Raw(s)), Value::Null) => s.is_empty(),
        (Some(Lit::Bool(b)), Value::Bool(v)) => b == v,
        (Some(Lit::Bool(b)), Value::Null) => !b,
        (Some(Lit::Int(i)), Value::Number(n)) => n.as_i64() == Some(*i),
        (Some(Lit::Int(i)), Value::Null) => *i == 0,
        _ => false,
    }
}

fn contains(m: &Match, value: &Value) -> bool {
    let Some(lit) = m.value.as_ref() else {
        return false;
    };
    match value {
        Value::String(s) => matches!(lit, Lit::Raw(needle) if s.contains(needle.as_str())),
        Value::Array(items) => items.iter().any(|item| equal(Some(lit), item)),
        Value::Object(map) => matches!(lit, Lit::Raw(key) if map.contains_key(key)),
        Value::Null => {
            matches!(lit, Lit::Raw(needle) if needle.is_empty()) && matches!(m.ty, Ty::Str)
        }
        _ => false,
    }
}
