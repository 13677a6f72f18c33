//! BuildKit's word rules: splitting `ARG`/`ENV` arguments into words, expanding one word
//! (quotes, the escape character, `$x`, `${x}`, `${x:-y}`, `${x-y}`, `${x:+y}`, `${x+y}`), and
//! finding heredoc names. Substitutions BuildKit versions disagree on (`${x#y}`, `${x%y}`,
//! `${x/y/z}`, `${x?y}`, special and positional parameters) are refused.

/// What a variable holds, as far as the worker can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Set(String),
    Unset,
    /// The builder may know a value berth cannot (a built-in argument, the base image's `ENV`).
    Unknown,
}

/// Expands `word` the way BuildKit's `ProcessWord` does, with `lookup` for variables.
pub(super) fn expand(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Value,
) -> Result<String, String> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        at: 0,
        escape,
        lookup,
    };
    lexer.until(None)
}

struct Lexer<'a> {
    chars: Vec<char>,
    at: usize,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Value,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.at += usize::from(c.is_some());
        c
    }

    /// Reads up to `stop` (consumed) or the end.
    fn until(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                return Ok(out);
            }
            match c {
                '\'' => out.push_str(&self.single_quoted()?),
                '"' => out.push_str(&self.double_quoted()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.next();
                    if c == self.escape {
                        match self.next() {
                            Some(escaped) => out.push(escaped),
                            None => break,
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
        match stop {
            Some(stop) => Err(format!("no matching {stop:?}")),
            None => Ok(out),
        }
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.next();
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err("no matching single quote".into()),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.next();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("no matching double quote".into()),
                Some('"') => {
                    self.next();
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.next();
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.next();
                                out.push(n);
                            }
                            Some(_) => out.push(c),
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.next();
            } else {
                break;
            }
        }
        name
    }

    fn value(&self, name: &str) -> Result<Option<String>, String> {
        match (self.lookup)(name) {
            Value::Set(v) => Ok(Some(v)),
            Value::Unset => Ok(None),
            Value::Unknown => Err(format!(
                "${name} is not declared by an ARG or ENV berth can read, so its value is not known before the build"
            )),
        }
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.next();
        let special = |c: char| c.is_ascii_digit() || "@*#?-$!".contains(c);
        if self.peek() != Some('{') {
            if self.peek().is_some_and(special) {
                return Err(
                    "special and positional parameters ($1, $@, ...) are not supported".into(),
                );
            }
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.value(&name)?.unwrap_or_default());
        }
        self.next();
        if self.peek().is_some_and(special) {
            return Err("special and positional parameters (${1}, ...) are not supported".into());
        }
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution".into());
        }
        let unsupported = || {
            Err(
                "substitutions other than ${x}, ${x:-y}, ${x-y}, ${x:+y}, ${x+y} are not supported"
                    .into(),
            )
        };
        match self.next() {
            Some('}') => Ok(self.value(&name)?.unwrap_or_default()),
            Some(c @ (':' | '-' | '+')) => {
                let null_is_unset = c == ':';
                let op = if null_is_unset { self.next() } else { Some(c) };
                if !matches!(op, Some('-' | '+')) {
                    return unsupported();
                }
                let word = self.until(Some('}'))?;
                let value = self.value(&name)?;
                let set = match &value {
                    Some(v) => !(null_is_unset && v.is_empty()),
                    None => false,
                };
                Ok(match (op, set) {
                    (Some('-'), true) => value.unwrap_or_default(),
                    (Some('-'), false) => word,
                    (_, true) => word,
                    (_, false) => String::new(),
                })
            }
            None => Err("missing '}'".into()),
            Some(_) => unsupported(),
        }
    }
}

/// Splits `ARG`/`ENV` arguments into words at blanks outside quotes, keeping quotes and escapes
/// as they are (the words are expanded afterwards).
pub(super) fn split_raw(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        word.push(c);
        if c == escape
            && quote != Some('\'')
            && let Some(next) = chars.next()
        {
            word.push(next);
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// One heredoc a line opens.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Heredoc {
    pub name: String,
    /// `<<-`: leading tabs are stripped before comparing with the terminator.
    pub chomp: bool,
}

/// Heredocs a `RUN`/`COPY`/`ADD` line opens: words `[n]<<[-]NAME` (quotes around the name
/// allowed), in order.
pub(super) fn heredoc_names(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut docs = Vec::new();
    for word in split_raw(line, '\\') {
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        let Some(rest) = word[digits..].strip_prefix("<<") else {
            continue;
        };
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.is_empty() || rest.contains('<') {
            continue;
        }
        let name = expand(rest, '\\', &|_| Value::Unset)
            .map_err(|e| format!("heredoc name {rest:?}: {e}"))?;
        if name.is_empty() || split_raw(&name, '\\').len() != 1 {
            continue;
        }
        docs.push(Heredoc { name, chomp });
    }
    Ok(docs)
}
