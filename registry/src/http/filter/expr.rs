//! Consul's `?filter=` expressions (the go-bexpr language as Consul's servers run it): the
//! expression tree and [`Filter`]; the parser is in `parse.rs`, the check of selectors and
//! operators against the answer's type ([`Ty`]) in `check.rs`, the evaluation over an answer
//! element's wire JSON in `eval.rs`.
//!
//! Grammar: `or` / `and` / `not` with the usual precedence, parentheses, and match
//! expressions `<Selector> ==|!= <Value>`, `<Selector> [not] contains <Value>`,
//! `<Selector> [not] matches <Value>`, `<Selector> is [not] empty`, `<Value> [not] in
//! <Selector>`. A selector is `Ident(.Ident | ["key"])*`; a value is a selector (its text), a
//! number, or a `"..."` / `` `...` `` string.

mod check;
mod eval;
mod parse;

use std::fmt;

use regex::Regex;
use serde_json::Value;

use super::schema::Ty;
use check::check;
use eval::eval;
use parse::Parser;

/// A match operator, named as go-bexpr names it in its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Equal,
    NotEqual,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Matches,
    NotMatches,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Equal => "Equal",
            Op::NotEqual => "Not Equal",
            Op::In => "In",
            Op::NotIn => "Not In",
            Op::IsEmpty => "Is Empty",
            Op::IsNotEmpty => "Is Not Empty",
            Op::Matches => "Matches",
            Op::NotMatches => "Not Matches",
        }
    }

    /// The answer for a map key that is not there.
    fn when_absent(self) -> bool {
        !matches!(self, Op::Equal | Op::IsNotEmpty | Op::In)
    }
}

/// A value of a match expression, converted to the selected field's type once checked.
#[derive(Debug, Clone)]
enum Lit {
    Raw(String),
    Bool(bool),
    Int(i64),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct Match {
    selector: Vec<String>,
    op: Op,
    value: Option<Lit>,
    /// The leaf type, known once checked.
    ty: Ty,
}

#[derive(Debug, Clone)]
enum Expr {
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Match(Match),
}

/// A checked filter expression, ready to run over answer elements.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    expr: Expr,
}

/// Why an expression was refused; `Display` is Consul's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilterError(pub(crate) String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Failed to create boolean expression evaluator: {}",
            self.0
        )
    }
}

/// go-bexpr limits an expression to this many match expressions.
const MAX_MATCHES: usize = 32;
/// ... and a value to this many bytes.
const MAX_VALUE_LENGTH: usize = 512;

impl Filter {
    /// Parses `text` and checks it against the element type `ty`.
    pub(crate) fn new(text: &str, ty: Ty) -> Result<Self, FilterError> {
        let mut parser = Parser::new(text);
        let mut expr = parser.input().map_err(FilterError)?;
        let mut count = 0;
        check(&mut expr, ty, &mut count).map_err(FilterError)?;
        if count > MAX_MATCHES {
            return Err(FilterError(format!(
                "Number of match expressions ({count}) exceeds the limit ({MAX_MATCHES})"
            )));
        }
        Ok(Self { expr })
    }

    /// Whether the element `datum` (wire JSON of one answer element) matches.
    pub(crate) fn matches(&self, datum: &Value, ty: Ty) -> bool {
        eval(&self.expr, datum, ty)
    }
}
