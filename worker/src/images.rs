//! What a build uses and leaves behind: the images a Dockerfile builds on (so a stack cannot
//! start from another instance's image) and the image ids the classic builder's output reports
//! (so the intermediate images of stages and failed builds can be removed).

use std::collections::BTreeMap;

/// Images a Dockerfile reads: `FROM` images that are neither `scratch` nor an earlier stage, and
/// `COPY --from=` and `RUN --mount=...,from=` images that are neither a stage name nor a stage
/// index. `ARG`s before the first
/// `FROM` (their defaults, overridden by `build_args`) are substituted the way Docker does
/// (`$A`, `${A}`, `${A:-word}`, `${A:+word}`; unset is empty).
///
/// Best effort: it follows `\` continuations, comments and the `escape` parser directive, which
/// covers how Dockerfiles name images; anything it misreads is at worst an image it does not
/// check.
pub fn image_refs(dockerfile: &str, build_args: &BTreeMap<String, String>) -> Vec<String> {
    let mut vars = BTreeMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut refs: Vec<String> = Vec::new();
    let push = |refs: &mut Vec<String>, r: String| {
        if !r.is_empty() && !refs.contains(&r) {
            refs.push(r);
        }
    };
    for (_, line) in logical_lines(dockerfile) {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        match instruction.to_ascii_uppercase().as_str() {
            "ARG" if stages.is_empty() => {
                for decl in words {
                    let (name, default) = match decl.split_once('=') {
                        Some((n, d)) => (n, Some(unquote(d))),
                        None => (decl, None),
                    };
                    if let Some(value) = build_args.get(name).cloned().or(default) {
                        vars.insert(name.to_owned(), value);
                    }
                }
            }
            "FROM" => {
                let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
                let image = rest
                    .first()
                    .map(|i| substitute(i, &vars))
                    .unwrap_or_default();
                let lower = image.to_ascii_lowercase();
                if lower != "scratch" && !stages.contains(&lower) {
                    push(&mut refs, image);
                }
                let name = match rest.as_slice() {
                    [_, as_, name, ..] if as_.eq_ignore_ascii_case("as") => name.to_lowercase(),
                    _ => String::new(),
                };
                stages.push(name);
            }
            // BuildKit's `RUN --mount=...,from=<image>` reads an image as well.
            "RUN" => {
                for flag in words.take_while(|w| w.starts_with("--")) {
                    let Some(mount) = flag.strip_prefix("--mount=") else {
                        continue;
                    };
                    for from in mount.split(',').filter_map(|kv| kv.strip_prefix("from=")) {
                        let from = substitute(from, &vars);
                        let lower = from.to_ascii_lowercase();
                        if from.parse::<usize>().is_err() && !stages.contains(&lower) {
                            push(&mut refs, from);
                        }
                    }
                }
            }
            "COPY" => {
                for flag in words.take_while(|w| w.starts_with("--")) {
                    if let Some(from) = flag.strip_prefix("--from=") {
                        let from = substitute(from, &vars);
                        let lower = from.to_ascii_lowercase();
                        if from.parse::<usize>().is_err() && !stages.contains(&lower) {
                            push(&mut refs, from);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    refs
}

/// Whether a Dockerfile has a `RUN --mount=type=cache`: BuildKit keys cache mounts by id for
/// the whole engine, so two instances naming the same id would share (and could read) one
/// cache.
pub fn has_cache_mount(dockerfile: &str) -> bool {
    logical_lines(dockerfile).iter().any(|(_, line)| {
        let mut words = line.split_whitespace();
        words.next().is_some_and(|i| i.eq_ignore_ascii_case("RUN"))
            && words
                .take_while(|w| w.starts_with("--"))
                .filter_map(|w| w.strip_prefix("--mount="))
                .any(|m| m.split(',').any(|kv| kv == "type=cache"))
    })
}

/// `dockerfile` with one `LABEL` instruction carrying `labels` at the end of the stage the build
/// stops at (`target`, else the last). Docker's `labels` build option makes one LABEL step per
/// label instead, each a container created and committed (about a second each here), and such
/// steps, instance-specific, never come from another instance's cache. `None` when the file
/// ends inside a continuation, where an added line would join the last instruction.
pub fn with_labels(
    dockerfile: &str,
    target: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    let label = labels
        .iter()
        .map(|(k, v)| format!("{} {}", quoted(k), quoted(v)))
        .map(|kv| kv.replacen(' ', "=", 1))
        .collect::<Vec<_>>()
        .join(" ");
    let label = format!("LABEL {label}");
    // Physical lines where each stage (`FROM`) starts, and the stages' names.
    let stages: Vec<(usize, String)> = logical_lines(dockerfile)
        .into_iter()
        .filter_map(|(at, line)| {
            let mut words = line.split_whitespace();
            if !words.next()?.eq_ignore_ascii_case("FROM") {
                return None;
            }
            let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
            let name = match rest.as_slice() {
                [_, as_, name, ..] if as_.eq_ignore_ascii_case("as") => name.to_lowercase(),
                _ => String::new(),
            };
            Some((at, name))
        })
        .collect();
    let target = target.map(str::to_lowercase);
    let stop = target
        .and_then(|t| stages.iter().position(|(_, name)| *name == t))
        .unwrap_or(stages.len().saturating_sub(1));
    let lines: Vec<&str> = dockerfile.lines().collect();
    let insert_at = stages.get(stop + 1).map_or(lines.len(), |(at, _)| *at);
    let dangling = insert_at == lines.len()
        && lines
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .is_some_and(|l| l.ends_with('\\') || l.ends_with('`'));
    if dangling {
        return None;
    }
    let mut out: Vec<&str> = lines[..insert_at].to_vec();
    out.push(&label);
    out.extend_from_slice(&lines[insert_at..]);
    let mut text = out.join("\n");
    text.push('\n');
    Some(text)
}

/// A Dockerfile string literal: double quotes, with `"` and the escape characters escaped (the
/// labels are validated names, so this never has much to do).
fn quoted(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '`' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Instructions with continuations joined, comments and blank lines dropped, each with the
/// index of the physical line it starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut escape = '\\';
    let mut lines = text.lines().enumerate().peekable();
    // Parser directives (`# escape=`` ` ``) come first, before any other line.
    while let Some((_, line)) = lines.peek() {
        let Some((key, value)) = line
            .trim()
            .strip_prefix('#')
            .and_then(|d| d.split_once('='))
        else {
            break;
        };
        if key.trim().eq_ignore_ascii_case("escape") && value.trim() == "`" {
            escape = '`';
        }
        lines.next();
    }
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = None;
    for (at, raw) in lines {
        let line = raw.trim();
        if line.starts_with('#') {
            continue;
        }
        if start.is_none() && !line.is_empty() {
            start = Some(at);
        }
        match line.strip_suffix(escape) {
            Some(body) => {
                current.push_str(body);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    out.push((start.unwrap_or(at), std::mem::take(&mut current)));
                }
                current.clear();
                start = None;
            }
        }
    }
    if !current.trim().is_empty() {
        out.push((start.unwrap_or(0), current));
    }
    out
}

fn unquote(s: &str) -> String {
    let quoted = s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')));
    if quoted {
        s[1..s.len() - 1].to_owned()
    } else {
        s.to_owned()
    }
}

/// Docker's variable substitution in `FROM` lines.
fn substitute(word: &str, vars: &BTreeMap<String, String>) -> String {
    let word = unquote(word);
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let mut inner = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                inner.push(c);
            }
            let value = if let Some((name, word)) = inner.split_once(":-") {
                vars.get(name)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| word.to_owned())
            } else if let Some((name, word)) = inner.split_once(":+") {
                vars.get(name)
                    .filter(|v| !v.is_empty())
                    .map(|_| word.to_owned())
                    .unwrap_or_default()
            } else {
                vars.get(&inner).cloned().unwrap_or_default()
            };
            out.push_str(&value);
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
            } else {
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or_default());
            }
        }
    }
    out
}

/// Image ids the classic builder reports while it builds: ` ---> <id>` after each step, where the
/// id after a `FROM` step is the base image (never the build's to remove).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BuildIds {
    /// Short ids of images the build made or took from the cache, in order.
    pub made: Vec<String>,
    /// Short ids of `FROM` images the build did not make (its bases).
    pub bases: Vec<String>,
    after_from: bool,
}

impl BuildIds {
    /// Reads one line of build output.
    pub fn observe(&mut self, line: &str) {
        let line = line.trim();
        if let Some(step) = line.strip_prefix("Step ") {
            let instruction = step
                .split_once(" : ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or_default();
            self.after_from = instruction.eq_ignore_ascii_case("FROM");
        } else if let Some(id) = line.strip_prefix("---> ")
            && id.len() >= 12
            && id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            // A `FROM` of an earlier stage names an image this build made: not a base.
            let base = std::mem::take(&mut self.after_from) && !self.made.iter().any(|m| m == id);
            let list = if base {
                &mut self.bases
            } else {
                &mut self.made
            };
            if !list.iter().any(|known| known == id) {
                list.push(id.to_owned());
            }
        }
    }

    /// Made images that are not bases, newest first (children before their parents), for
    /// removal once the build is over.
    pub fn intermediates(&self) -> Vec<&str> {
        self.made
            .iter()
            .rev()
            .filter(|id| !self.bases.contains(id))
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_label_instruction_ends_the_built_stage() {
        let labels = BTreeMap::from([
            ("org.berth.instance".to_owned(), "shop".to_owned()),
            ("org.berth.node".to_owned(), "n1".to_owned()),
        ]);
        let label = r#"LABEL "org.berth.instance"="shop" "org.berth.node"="n1""#;
        let cases: &[(&str, Option<&str>, Option<String>)] = &[
            (
                "FROM a\nRUN x\n",
                None,
                Some(format!("FROM a\nRUN x\n{label}\n")),
            ),
            // The target stage ends before the next FROM, comments and all.
            (
                "FROM a AS Build\nRUN x \\\n  && y\n# next\nFROM b\nCOPY --from=build / /\n",
                Some("build"),
                Some(format!(
                    "FROM a AS Build\nRUN x \\\n  && y\n# next\n{label}\nFROM b\nCOPY --from=build / /\n"
                )),
            ),
            // No such target (Docker will say so): the last stage, as without one.
            (
                "FROM a AS one\nFROM b\n",
                Some("nope"),
                Some(format!("FROM a AS one\nFROM b\n{label}\n")),
            ),
            // A file ending in a continuation would swallow the line.
            ("FROM a\nRUN x \\\n", None, None),
            ("# escape=`\nFROM a\nRUN x `\n\n# c\n", None, None),
        ];
        for (file, target, want) in cases {
            assert_eq!(&with_labels(file, *target, &labels), want, "{file:?}");
        }
    }

    #[test]
    fn cache_mounts_are_found() {
        assert!(has_cache_mount(
            "FROM a\nRUN --mount=type=cache,target=/root/.cache \\\n  make\n"
        ));
        assert!(has_cache_mount(
            "FROM a\nrun --mount=target=/c,type=cache make\n"
        ));
        assert!(!has_cache_mount(
            "FROM a\nRUN --mount=type=bind,target=/x make\n# RUN --mount=type=cache x\n"
        ));
        assert!(!has_cache_mount("FROM a\nRUN echo --mount=type=cache\n"));
    }

    #[test]
    fn image_refs_table() {
        let args = BTreeMap::from([("BASE".to_owned(), "b1-web:latest".to_owned())]);
        let cases: &[(&str, &[&str])] = &[
            ("FROM berth-base:latest\nRUN true\n", &["berth-base:latest"]),
            ("from b1-web\n", &["b1-web"]),
            (
                "FROM --platform=linux/amd64 b1-web:latest AS x\n",
                &["b1-web:latest"],
            ),
            ("FROM scratch\nCOPY a /a\n", &[]),
            (
                "FROM berth-base AS build\nRUN true\nFROM build\nCOPY --from=build /a /a\nCOPY --from=0 /a /a\n",
                &["berth-base"],
            ),
            (
                "FROM berth-base\nCOPY --chown=1 --from=b1-web:latest /greeting /g\n",
                &["berth-base", "b1-web:latest"],
            ),
            ("ARG BASE=berth-base\nFROM $BASE\n", &["b1-web:latest"]),
            ("ARG OTHER=b2-web\nFROM ${OTHER}\n", &["b2-web"]),
            ("ARG OTHER=\"b2-web\"\nFROM ${OTHER}:v1\n", &["b2-web:v1"]),
            ("FROM ${UNSET:-b3-web}\n", &["b3-web"]),
            ("FROM \\\n  b4-web \\\n  AS x\n", &["b4-web"]),
            ("# escape=`\nFROM `\n  b5-web\n", &["b5-web"]),
            ("# a comment\nFROM b6-web\n# FROM not-this\n", &["b6-web"]),
            ("FROM b7-web AS Stage\nFROM stage\n", &["b7-web"]),
            // BuildKit reads images in RUN mounts too; stages are fine.
            (
                "FROM berth-base AS s\nRUN --mount=type=bind,from=b8-web,target=/x --mount=type=cache,target=/c --mount=from=s,target=/s true\n",
                &["berth-base", "b8-web"],
            ),
        ];
        for (dockerfile, want) in cases {
            assert_eq!(image_refs(dockerfile, &args), *want, "{dockerfile}");
        }
    }

    #[test]
    fn build_ids_from_classic_builder_output() {
        let output = "Step 1/6 : FROM berth-base:latest AS stage1\n ---> d4a20f5d1f2c\nStep 2/6 : RUN echo a > /a\n ---> Running in 1f2e3d4c5b6a\nRemoving intermediate container 1f2e3d4c5b6a\n ---> 0123456789ab\nStep 3/6 : FROM berth-base:latest\n ---> d4a20f5d1f2c\nStep 4/6 : COPY --from=stage1 /a /a\n ---> Using cache\n ---> abcdefabcdef\nStep 5/6 : FROM stage1\n ---> 0123456789ab\nStep 6/6 : LABEL x=y\n ---> fedcba987654\nSuccessfully built fedcba987654\n";
        let mut ids = BuildIds::default();
        for line in output.lines() {
            ids.observe(line);
        }
        assert_eq!(ids.bases, ["d4a20f5d1f2c"]);
        assert_eq!(ids.made, ["0123456789ab", "abcdefabcdef", "fedcba987654"]);
        assert_eq!(
            ids.intermediates(),
            ["fedcba987654", "abcdefabcdef", "0123456789ab"]
        );
    }
}
