//! Consul's `?filter=` expressions (the go-bexpr language as Consul's servers run it): the
//! parser, the check of selectors and operators against the answer's type ([`Ty`]), and the
//! evaluation over an answer element's wire JSON.
//!
//! Grammar: `or` / `and` / `not` with the usual precedence, parentheses, and match
//! expressions `<Selector> ==|!= <Value>`, `<Selector> [not] contains <Value>`,
//! `<Selector> [not] matches <Value>`, `<Selector> is [not] empty`, `<Value> [not] in
//! <Selector>`. A selector is `Ident(.Ident | ["key"])*`; a value is a selector (its text), a
//! number, or a `"..."` / `` `...` `` string.

use std::fmt;

use regex::Regex;
use serde_json::Value;

use super::schema::Ty;

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

// ---- parser ------------------------------------------------------------------------------

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// The furthest position a rule failed at, and what was expected there.
    fail_pos: usize,
    expected: Vec<&'static str>,
}

type Parse<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            fail_pos: 0,
            expected: Vec::new(),
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn expect(&mut self, at: usize, what: &'static str) {
        if at > self.fail_pos {
            self.fail_pos = at;
            self.expected.clear();
        }
        if at == self.fail_pos && !self.expected.contains(&what) {
            self.expected.push(what);
        }
    }

    /// `line:col (offset)` of byte `at`, as the PEG parser reports positions.
    fn position(&self, at: usize) -> String {
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("{line}:{col} ({at})")
    }

    fn no_match(&self) -> String {
        let mut expected: Vec<&str> = self.expected.clone();
        expected.sort_unstable();
        let list = match expected.len() {
            0 => String::new(),
            1 => expected[0].to_owned(),
            n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
        };
        format!(
            "{}: no match found, expected: {list}",
            self.position(self.fail_pos)
        )
    }

    fn rule_error(&self, at: usize, rule: &str, text: &str) -> String {
        format!("{}: rule {rule}: {text}", self.position(at))
    }

    /// `[ \t\r\n]+`; whether any was eaten.
    fn ws(&mut self) -> bool {
        let rest = self.rest();
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        self.pos += rest.len() - trimmed.len();
        if trimmed.len() == rest.len() {
            self.expect(self.pos, "[ \\t\\r\\n]");
            false
        } else {
            true
        }
    }

    fn literal(&mut self, word: &'static str, shown: &'static str) -> bool {
        if self.rest().starts_with(word) {
            self.pos += word.len();
            true
        } else {
            self.expect(self.pos, shown);
            false
        }
    }

    /// `_ word _` (`trailing` whitespace required) without moving on failure.
    fn keyword(&mut self, words: &[&'static str], trailing: bool) -> bool {
        let start = self.pos;
        for word in words {
            if !self.ws() || !self.literal(word, word_shown(word)) {
                self.pos = start;
                return false;
            }
        }
        if trailing && !self.ws() {
            self.pos = start;
            return false;
        }
        true
    }

    fn input(&mut self) -> Parse<Expr> {
        self.ws();
        let expr = self.or()?;
        self.ws();
        if self.pos != self.text.len() {
            self.expect(self.pos, "EOF");
            return Err(self.no_match());
        }
        Ok(expr)
    }

    fn or(&mut self) -> Parse<Expr> {
        let left = self.and()?;
        if self.keyword(&["or"], true) {
            let right = self.or()?;
            return Ok(Expr::Or(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn and(&mut self) -> Parse<Expr> {
        let left = self.not()?;
        if self.keyword(&["and"], true) {
            let right = self.and()?;
            return Ok(Expr::And(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn not(&mut self) -> Parse<Expr> {
        let start = self.pos;
        if self.literal("not", "\"not\"") {
            if self.ws() {
                let inner = self.not()?;
                return Ok(match inner {
                    Expr::Not(operand) => *operand,
                    other => Expr::Not(Box::new(other)),
                });
            }
            self.pos = start;
        }
        self.group()
    }

    fn group(&mut self) -> Parse<Expr> {
        let start = self.pos;
        if self.literal("(", "\"(\"") {
            self.ws();
            let inner = self.or()?;
            self.ws();
            if self.literal(")", "\")\"") {
                return Ok(inner);
            }
            return Err(self.rule_error(start, "grouping", "Unmatched parentheses"));
        }
        self.matcher()
    }

    fn matcher(&mut self) -> Parse<Expr> {
        let start = self.pos;
        let first = self.value()?;
        if let Term::Selector(selector) = &first {
            let after = self.pos;
            // `<Selector> <op> <Value>`
            let with_value: [(&[&'static str], bool, Op); 6] = [
                (&["=="], false, Op::Equal),
                (&["!="], false, Op::NotEqual),
                (&["contains"], true, Op::In),
                (&["not", "contains"], true, Op::NotIn),
                (&["matches"], true, Op::Matches),
                (&["not", "matches"], true, Op::NotMatches),
            ];
            for (words, trailing, op) in with_value {
                let found = if words[0] == "==" || words[0] == "!=" {
                    self.ws();
                    let ok = self.literal(words[0], word_shown(words[0]));
                    if ok {
                        self.ws();
                    }
                    ok
                } else {
                    self.keyword(words, trailing)
                };
                if found {
                    let value = self.value()?;
                    return Ok(Expr::Match(Match {
                        selector: selector.clone(),
                        op,
                        value: Some(Lit::Raw(value.raw())),
                        ty: Ty::Str,
                    }));
                }
                self.pos = after;
            }
            // `<Selector> is [not] empty`
            for (words, op) in [
                (&["is", "empty"][..], Op::IsEmpty),
                (&["is", "not", "empty"][..], Op::IsNotEmpty),
            ] {
                if self.keyword(words, false) {
                    return Ok(Expr::Match(Match {
                        selector: selector.clone(),
                        op,
                        value: None,
                        ty: Ty::Str,
                    }));
                }
                self.pos = after;
            }
        }
        // `<Value> [not] in <Selector>`
        for (words, op) in [(&["in"][..], Op::In), (&["not", "in"][..], Op::NotIn)] {
            if self.keyword(words, true) {
                let at = self.pos;
                return match self.selector()? {
                    Some(selector) => Ok(Expr::Match(Match {
                        selector,
                        op,
                        value: Some(Lit::Raw(first.raw())),
                        ty: Ty::Str,
                    })),
                    None => Err(self.rule_error(at, "match", "Invalid selector")),
                };
            }
        }
        let _ = start;
        Err(self.no_match())
    }

    /// A value: a selector (its dotted text), a number or a string.
    fn value(&mut self) -> Parse<Term> {
        if let Some(selector) = self.selector()? {
            return Ok(Term::Selector(selector));
        }
        if let Some(number) = self.number()? {
            return Ok(Term::Text(number));
        }
        if let Some(text) = self.string()? {
            return Ok(Term::Text(text));
        }
        Err(self.no_match())
    }

    fn identifier(&mut self) -> Option<String> {
        let rest = self.rest();
        let mut chars = rest.char_indices();
        match chars.next() {
            Some((_, c)) if c.is_ascii_alphabetic() => {}
            _ => {
                self.expect(self.pos, "[a-zA-Z]");
                return None;
            }
        }
        let end = chars
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(rest.len(), |(i, _)| i);
        self.pos += end;
        Some(rest[..end].to_owned())
    }

    fn selector(&mut self) -> Parse<Option<Vec<String>>> {
        let Some(first) = self.identifier() else {
            return Ok(None);
        };
        let mut path = vec![first];
        loop {
            let start = self.pos;
            if self.literal(".", "\".\"") {
                match self.identifier() {
                    Some(ident) => {
                        path.push(ident);
                        continue;
                    }
                    None => {
                        self.pos = start;
                        break;
                    }
                }
            }
            if self.literal("[", "\"[\"") {
                self.ws();
                let Some(key) = self.string()? else {
                    return Err(self.rule_error(start, "index", "Invalid index"));
                };
                self.ws();
                if !self.literal("]", "\"]\"") {
                    return Err(self.rule_error(start, "index", "Unclosed index expression"));
                }
                path.push(key);
                continue;
            }
            break;
        }
        Ok(Some(path))
    }

    fn number(&mut self) -> Parse<Option<String>> {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        let mut at = self.pos;
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        match bytes.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => {
                while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                    at += 1;
                }
            }
            _ => {
                if at == start {
                    self.expect(start, "\"-\"");
                }
                self.expect(at, "[0-9]");
                return Ok(None);
            }
        }
        if bytes.get(at) == Some(&b'.') && bytes.get(at + 1).is_some_and(u8::is_ascii_digit) {
            at += 1;
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
        }
        match bytes.get(at) {
            None | Some(b' ' | b'\t' | b'\r' | b'\n' | b')') => {
                self.pos = at;
                Ok(Some(self.text[start..at].to_owned()))
            }
            Some(_) => Err(self.rule_error(at, "number", "Invalid number literal")),
        }
    }

    fn string(&mut self) -> Parse<Option<String>> {
        let start = self.pos;
        let rest = self.rest();
        let quote = match rest.chars().next() {
            Some(q @ ('"' | '`')) => q,
            _ => {
                self.expect(start, "\"\\\"\"");
                self.expect(start, "\"`\"");
                return Ok(None);
            }
        };
        let body = &rest[1..];
        let Some(end) = body.find(quote) else {
            return Err(self.rule_error(self.text.len(), "string", "Unterminated string literal"));
        };
        let inner = &body[..end];
        self.pos += end + 2;
        if quote == '`' {
            return Ok(Some(inner.to_owned()));
        }
        unquote(inner)
            .map(Some)
            .ok_or_else(|| self.rule_error(start, "string", "invalid syntax"))
    }
}

fn word_shown(word: &str) -> &'static str {
    match word {
        "==" => "\"==\"",
        "!=" => "\"!=\"",
        "or" => "\"or\"",
        "and" => "\"and\"",
        "not" => "\"not\"",
        "in" => "\"in\"",
        "is" => "\"is\"",
        "empty" => "\"empty\"",
        "contains" => "\"contains\"",
        "matches" => "\"matches\"",
        _ => "keyword",
    }
}

/// A parsed value or selector.
enum Term {
    Selector(Vec<String>),
    Text(String),
}

impl Term {
    fn raw(&self) -> String {
        match self {
            Term::Selector(path) => path.join("."),
            Term::Text(text) => text.clone(),
        }
    }
}

/// Go's `strconv.Unquote` body of a `"..."` string: the escapes Go knows.
fn unquote(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\n' {
            return None;
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let escaped = match chars.next()? {
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            'x' => hex(&mut chars, 2)?,
            'u' => hex(&mut chars, 4)?,
            'U' => hex(&mut chars, 8)?,
            d @ '0'..='7' => {
                let mut value = d.to_digit(8)?;
                for _ in 0..2 {
                    value = value * 8 + chars.next()?.to_digit(8)?;
                }
                char::from_u32(value)?
            }
            _ => return None,
        };
        out.push(escaped);
    }
    Some(out)
}

fn hex(chars: &mut std::str::Chars<'_>, digits: usize) -> Option<char> {
    let mut value = 0u32;
    for _ in 0..digits {
        value = value * 16 + chars.next()?.to_digit(16)?;
    }
    char::from_u32(value)
}

// ---- checking against the element type ----------------------------------------------------

fn quoted(path: &[String]) -> String {
    format!("{:?}", path.join("."))
}

fn check(expr: &mut Expr, ty: Ty, count: &mut usize) -> Result<(), String> {
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

// ---- evaluation ----------------------------------------------------------------------------

fn eval(expr: &Expr, datum: &Value, ty: Ty) -> bool {
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
