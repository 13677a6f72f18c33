//! Which images a Dockerfile reads: `FROM` images that are neither `scratch` nor an earlier
//! stage, and `COPY --from=` and `RUN --mount=...,from=` images that are neither an earlier
//! stage's name nor its index. `FROM` sees the `ARG`s declared before the first `FROM` (their
//! defaults expanded in order, a build arg taking their place as given). Whatever the builder
//! could read differently is refused: a variable in `--from`/`from=` (the base image's `ENV`
//! would decide it), BuildKit's built-in arguments in `FROM`, `ONBUILD` triggers that read images.

use std::collections::BTreeMap;

use super::words::{self, Value};
use super::{Dockerfile, DockerfileError, Instruction, parse, refuse, sub_instruction};

/// What a Dockerfile reads of the engine.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageRefs {
    /// Images read, each with the 1-based line first naming it.
    pub images: Vec<(String, usize)>,
    /// The first line with a `RUN --mount=type=cache` (BuildKit shares those engine-wide).
    pub cache_mount: Option<usize>,
}

impl ImageRefs {
    fn push(&mut self, image: String, line: usize) {
        if !self.images.iter().any(|(i, _)| *i == image) {
            self.images.push((image, line));
        }
    }
}

/// Reads `text` with and without heredocs (a heredoc body that one builder reads as text and
/// another as instructions is checked both ways) and answers every image either way reads.
pub fn image_refs(
    text: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<ImageRefs, DockerfileError> {
    let mut refs = ImageRefs::default();
    for heredocs in [true, false] {
        walk(&parse(text, heredocs)?, build_args, &mut refs)?;
    }
    Ok(refs)
}

/// Argument names BuildKit defines without an `ARG` (`TARGETPLATFORM`, `BUILDKIT_*`, ...).
fn builtin(name: &str) -> bool {
    name.starts_with("TARGET") || name.starts_with("BUILD")
}

fn walk(
    file: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    refs: &mut ImageRefs,
) -> Result<(), DockerfileError> {
    let escape = file.escape;
    let mut meta: BTreeMap<String, Value> = BTreeMap::new();
    // Stage names (lowercased; empty for an unnamed stage), in order.
    let mut stages: Vec<String> = Vec::new();
    for ins in &file.instructions {
        match ins.keyword.as_str() {
            "arg" if stages.is_empty() => {
                for word in words::split_raw(&ins.args, escape) {
                    let (name, default) = match word.split_once('=') {
                        Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                        None => (word.clone(), None),
                    };
                    let value = match (build_args.get(&name), default) {
                        (Some(given), _) => Value::Set(given.clone()),
                        (None, Some(default)) => {
                            let lookup = |n: &str| meta_value(&meta, n);
                            words::expand(&default, escape, &lookup)
                                .map_or(Value::Unknown, Value::Set)
                        }
                        (None, None) => Value::Unset,
                    };
                    meta.insert(name, value);
                }
            }
            "from" => {
                let args: Vec<&str> = ins.args.split_ascii_whitespace().collect();
                let (image, name) = match args.as_slice() {
                    [image] => (*image, None),
                    [image, as_, name] if as_.eq_ignore_ascii_case("as") => (*image, Some(*name)),
                    _ => {
                        return Err(refuse(
                            ins.line,
                            "FROM takes an image and optionally AS <name>",
                        ));
                    }
                };
                let lookup = |n: &str| meta_value(&meta, n);
                let image = words::expand(image, escape, &lookup)
                    .map_err(|e| refuse(ins.line, format!("FROM {image}: {e}")))?;
                if image.is_empty() {
                    return Err(refuse(ins.line, "FROM names no image"));
                }
                let lower = image.to_ascii_lowercase();
                if lower != "scratch" && !stages.contains(&lower) {
                    refs.push(image, ins.line);
                }
                let name = match name {
                    Some(name) => stage_name(name).ok_or_else(|| {
                        refuse(ins.line, format!("invalid name for build stage: {name:?}"))
                    })?,
                    None => String::new(),
                };
                stages.push(name);
            }
            _ => reads(ins, escape, &stages, refs)?,
        }
    }
    Ok(())
}

fn meta_value(meta: &BTreeMap<String, Value>, name: &str) -> Value {
    match meta.get(name) {
        Some(v) => v.clone(),
        None if builtin(name) => Value::Unknown,
        None => Value::Unset,
    }
}

/// A stage name as BuildKit takes it: lowercased, `[a-z][a-z0-9-_.]*`.
fn stage_name(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let mut chars = lower.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    ok.then_some(lower)
}

/// The images a stage instruction reads through `--from=` and `--mount=...,from=`.
fn reads(
    ins: &Instruction,
    escape: char,
    stages: &[String],
    refs: &mut ImageRefs,
) -> Result<(), DockerfileError> {
    if ins.keyword == "onbuild" {
        let inner = sub_instruction(ins)?;
        let mut found = ImageRefs::default();
        reads(&inner, escape, stages, &mut found)?;
        if !found.images.is_empty() || found.cache_mount.is_some() || inner.keyword == "from" {
            return Err(refuse(
                ins.line,
                "ONBUILD triggers that read images or mount caches are not supported",
            ));
        }
        return Ok(());
    }
    for flag in &ins.flags {
        let (key, value) = flag.split_once('=').unwrap_or((flag, ""));
        match (ins.keyword.as_str(), key.to_ascii_lowercase().as_str()) {
            ("copy" | "add", "from") => {
                let from = from_value(ins, escape, value)?;
                source(ins, &from, stages, refs)?;
            }
            ("run", "mount") => {
                if value.contains('"') {
                    return Err(refuse(
                        ins.line,
                        "quotes inside a --mount value are not supported",
                    ));
                }
                for field in value.split(',') {
                    let (k, v) = field.split_once('=').unwrap_or((field, ""));
                    match k.trim().to_ascii_lowercase().as_str() {
                        "from" => {
                            let from = from_value(ins, escape, v)?;
                            source(ins, &from, stages, refs)?;
                        }
                        "type" if v.trim().eq_ignore_ascii_case("cache") => {
                            refs.cache_mount.get_or_insert(ins.line);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A `--from`/`from=` value: quotes and escapes are taken as the builder takes them; variables
/// are refused, since the base image's `ENV` may set them.
fn from_value(ins: &Instruction, escape: char, value: &str) -> Result<String, DockerfileError> {
    let what = |e: String| {
        refuse(
            ins.line,
            format!(
                "{} from={value}: {e}; name the stage or image literally",
                ins.keyword.to_ascii_uppercase()
            ),
        )
    };
    if value.contains('$') {
        return Err(what("variables are not supported there".into()));
    }
    let from = words::expand(value, escape, &|_| Value::Unknown).map_err(what)?;
    if from.trim().is_empty() {
        return Err(what("names nothing".into()));
    }
    Ok(from)
}

/// An earlier stage by name or index, else an image.
fn source(
    ins: &Instruction,
    from: &str,
    stages: &[String],
    refs: &mut ImageRefs,
) -> Result<(), DockerfileError> {
    if let Ok(index) = from.parse::<usize>() {
        if index < stages.len() {
            return Ok(());
        }
        return Err(refuse(ins.line, format!("no earlier build stage {index}")));
    }
    if !stages.contains(&from.to_ascii_lowercase()) {
        refs.push(from.to_owned(), ins.line);
    }
    Ok(())
}
