//! What a build adds and leaves behind: berth's `LABEL` instruction at the end of the built stage,
//! and the image ids the classic builder's output reports (so the intermediate images of stages
//! and failed builds can be removed). What a Dockerfile reads is `crate::dockerfile`'s.

use std::collections::BTreeMap;

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
    let file = crate::dockerfile::parse(dockerfile, true).ok()?;
    let stages: Vec<(usize, String)> = file
        .instructions
        .iter()
        .filter(|i| i.keyword == "from")
        .map(|i| {
            let args: Vec<&str> = i.args.split_ascii_whitespace().collect();
            let name = match args.as_slice() {
                [_, as_, name, ..] if as_.eq_ignore_ascii_case("as") => name.to_lowercase(),
                _ => String::new(),
            };
            (i.line - 1, name)
        })
        .collect();
    let target = target.map(str::to_lowercase);
    let stop = target
        .and_then(|t| stages.iter().position(|(_, name)| *name == t))
        .unwrap_or(stages.len().saturating_sub(1));
    let lines: Vec<&str> = dockerfile.lines().collect();
    let insert_at = stages.get(stop + 1).map_or(lines.len(), |(at, _)| *at);
    let dangling = insert_at == lines.len() && file.instructions.last().is_some_and(|i| i.open);
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
