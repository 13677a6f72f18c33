//! The `?filter=` parser: text to an unchecked [`Expr`], with go-bexpr's error texts (the
//! furthest position a rule failed at, and what was expected there).

use super::{Expr, Lit, Match, Op};
use crate::http::filter::schema::Ty;

pub(super) struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// The furthest position a rule failed at, and what was expected there.
    fail_pos: usize,
    expected: Vec<&'static str>,
}

type Parse<T> = Result<T, String>;

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str) -> Self {
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

    pub(super) fn input(&mut self) -> Parse<Expr> {
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
