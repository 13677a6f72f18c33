//! Reading a Dockerfile the way BuildKit's parser reads it: a UTF-8 BOM dropped, parser
//! directives (`# escape=`, `# syntax=`) at the top only, continuations joined without a space
//! (so `FR\` + newline + `OM` is `FROM`), comment and blank lines inside continuations skipped,
//! heredoc bodies taken out, builder flags (`--from=`, `--mount=`) unquoted and unescaped.
//! [`refs`] then says which images a file reads; what it cannot resolve unambiguously it
//! refuses, naming the line.

mod flags;
mod refs;
mod words;

#[cfg(test)]
mod tests;

pub use refs::{ImageRefs, image_refs};

/// One instruction as BuildKit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based physical line the instruction starts on.
    pub line: usize,
    /// 1-based physical line its last continuation (or heredoc terminator) is on.
    pub end_line: usize,
    /// Lowercased keyword (`from`, `copy`, ...).
    pub keyword: String,
    /// Builder flags (`--from=x` as `from=x`), unquoted and unescaped as BuildKit does.
    pub flags: Vec<String>,
    /// The rest of the line after the flags, trimmed.
    pub args: String,
    /// Heredoc bodies taken out after the line (`RUN <<EOF`).
    pub heredocs: Vec<String>,
    /// The file ended inside this instruction's continuation.
    pub open: bool,
}

/// A Dockerfile refused, with the line it is refused at (0: the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct DockerfileError {
    pub line: usize,
    pub reason: String,
}

pub(crate) fn refuse(line: usize, reason: impl Into<String>) -> DockerfileError {
    DockerfileError {
        line,
        reason: reason.into(),
    }
}

/// The parsed file: its escape character and instructions.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// Frontends a `# syntax=` directive may name: the official Dockerfile frontend (any other
/// image would run as the build's parser, reading whatever it likes).
const SYNTAX_IMAGES: &[&str] = &[
    "docker/dockerfile",
    "docker.io/docker/dockerfile",
    "docker/dockerfile-upstream",
    "docker.io/docker/dockerfile-upstream",
];

/// Physical lines as Go's line scanner gives them: split on `\n`, one trailing `\r` dropped.
fn physical_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if text.ends_with('\n') {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// A line without the escape character (and the blanks after it) that continues it; `true`
/// when the line does not continue.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(body) => (body, false),
        None => (line, true),
    }
}

/// `# name = value` at the top of the file.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let (name, rest) = rest.split_at(name_len);
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_owned()))
}

/// Parses `text` with BuildKit's rules; `heredocs` off reads heredoc bodies as instructions (the
/// classic builder's older parsers did), which [`image_refs`] also checks.
pub fn parse(text: &str, heredocs: bool) -> Result<Dockerfile, DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = physical_lines(text);
    let mut escape = '\\';
    let mut at = 0;
    let mut seen = Vec::new();
    while let Some(line) = lines.get(at) {
        let Some((name, value)) = directive(line) else {
            break;
        };
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            break;
        }
        if seen.contains(&name) {
            return Err(refuse(
                at + 1,
                format!("only one {name} parser directive can be used"),
            ));
        }
        match name.as_str() {
            "escape" => {
                escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return Err(refuse(at + 1, format!("invalid escape token {value:?}"))),
                }
            }
            "syntax" => {
                let image = value.split(['@', ':']).next().unwrap_or_default();
                if !SYNTAX_IMAGES.contains(&image.to_ascii_lowercase().as_str()) {
                    return Err(refuse(
                        at + 1,
                        format!(
                            "# syntax={value} names a frontend other than docker/dockerfile, which berth does not run"
                        ),
                    ));
                }
            }
            _ => {}
        }
        seen.push(name);
        at += 1;
    }
    let mut instructions = Vec::new();
    while at < lines.len() {
        let start = at;
        let first = lines[at].trim_start();
        at += 1;
        if first.starts_with('#') {
            continue;
        }
        let (first, mut done) = trim_continuation(first, escape);
        if done && first.trim().is_empty() {
            continue;
        }
        let mut line = first.to_owned();
        while !done && at < lines.len() {
            let next = lines[at];
            at += 1;
            if is_comment(next) || next.trim_start().is_empty() {
                continue;
            }
            let (body, end) = trim_continuation(next, escape);
            line.push_str(body);
            done = end;
        }
        let (keyword, rest) = split_command(&line);
        if keyword.is_empty() {
            continue;
        }
        let (args, flags) = flags::extract(rest).map_err(|reason| refuse(start + 1, reason))?;
        let mut instruction = Instruction {
            line: start + 1,
            end_line: at,
            keyword,
            flags,
            args,
            heredocs: Vec::new(),
            open: !done,
        };
        if heredocs && can_hold_heredoc(&instruction) {
            for doc in words::heredoc_names(&line).map_err(|r| refuse(start + 1, r))? {
                let mut body = String::new();
                let mut terminated = false;
                while at < lines.len() {
                    let raw = lines[at];
                    at += 1;
                    let candidate = if doc.chomp {
                        raw.trim_start_matches('\t')
                    } else {
                        raw
                    };
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    body.push_str(raw);
                    body.push('\n');
                }
                if !terminated {
                    return Err(refuse(start + 1, "unterminated heredoc"));
                }
                instruction.heredocs.push(body);
            }
            instruction.end_line = at;
        }
        instructions.push(instruction);
    }
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

/// The keyword (lowercased) and the rest, split at the first run of blanks.
fn split_command(line: &str) -> (String, &str) {
    let line = line.trim();
    let blank = |c: char| matches!(c, ' ' | '\t' | '\r' | '\u{b}' | '\u{c}');
    match line.find(blank) {
        Some(i) => (
            line[..i].to_ascii_lowercase(),
            line[i..].trim_start_matches(blank),
        ),
        None => (line.to_ascii_lowercase(), ""),
    }
}

/// `RUN`, `COPY` and `ADD` in shell form hold heredocs.
fn can_hold_heredoc(i: &Instruction) -> bool {
    matches!(i.keyword.as_str(), "run" | "copy" | "add") && !is_json_array(&i.args)
}

fn is_json_array(args: &str) -> bool {
    args.starts_with('[') && serde_json::from_str::<Vec<String>>(args).is_ok()
}

/// The instruction `ONBUILD <instruction>` holds, parsed like a line of its own.
pub(crate) fn sub_instruction(outer: &Instruction) -> Result<Instruction, DockerfileError> {
    let (keyword, rest) = split_command(&outer.args);
    let (args, flags) = flags::extract(rest).map_err(|reason| refuse(outer.line, reason))?;
    Ok(Instruction {
        keyword,
        flags,
        args,
        heredocs: Vec::new(),
        ..outer.clone()
    })
}
