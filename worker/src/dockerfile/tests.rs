//! The parser against BuildKit's rules: a table of files and the images they read, the four
//! tricks that got past the old check, and generated variants of them (continuations at every
//! position of every keyword, BOM, escape directive, quoting and escapes, CRLF, comments and
//! blank lines inside continuations), each of which must name the foreign image or be refused.

use std::collections::BTreeMap;

use super::{image_refs, parse};

const FOREIGN: &str = "b1-web:latest";

fn refs(text: &str) -> Result<Vec<String>, String> {
    let args = BTreeMap::from([("GIVEN".to_owned(), "b9-web".to_owned())]);
    image_refs(text, &args)
        .map(|r| r.images.into_iter().map(|(i, _)| i).collect())
        .map_err(|e| e.to_string())
}

/// The foreign image is read, or the file is refused.
fn caught(text: &str) -> bool {
    match refs(text) {
        Ok(images) => images.iter().any(|i| i == FOREIGN),
        Err(_) => true,
    }
}

#[test]
fn image_refs_table() {
    let cases: &[(&str, &[&str])] = &[
        ("FROM berth-base:latest\nRUN true\n", &["berth-base:latest"]),
        ("from b1-web\n", &["b1-web"]),
        (
            "FROM --platform=$BUILDPLATFORM b1-web:latest AS x\n",
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
        ("ARG GIVEN=berth-base\nFROM $GIVEN\n", &["b9-web"]),
        ("ARG OTHER=b2-web\nFROM ${OTHER}\n", &["b2-web"]),
        ("ARG OTHER=\"b2-web\"\nFROM ${OTHER}:v1\n", &["b2-web:v1"]),
        ("ARG A=b2 B=${A}-web\nFROM $B\n", &["b2-web"]),
        ("FROM ${UNSET:-b3-web}\n", &["b3-web"]),
        (
            "ARG E=\nFROM ${E:-b3-web}\nFROM ${E-b4-web}x\n",
            &["b3-web", "x"],
        ),
        ("FROM \\\n  b4-web \\\n  AS x\n", &["b4-web"]),
        ("# escape=`\nFROM `\n  b5-web\n", &["b5-web"]),
        ("# a comment\nFROM b6-web\n# FROM not-this\n", &["b6-web"]),
        ("FROM b7-web AS Stage\nFROM stage\n", &["b7-web"]),
        (
            "FROM berth-base AS s\nRUN --mount=type=bind,from=b8-web,target=/x --mount=type=tmpfs,target=/c --mount=from=s,target=/s true\n",
            &["berth-base", "b8-web"],
        ),
        // Heredoc bodies are text, and benign ones are accepted.
        (
            "# syntax=docker/dockerfile:1.7\nFROM berth-base\nRUN <<EOF\nset -e\necho hi > /x\nEOF\nCOPY <<-EOT /etc/motd\n\thello\n\tEOT\nCMD [\"sleep\", \"1\"]\n",
            &["berth-base"],
        ),
        // A stage named later is not a stage yet (the classic builder reads the image).
        (
            "FROM berth-base\nCOPY --from=later /a /a\nFROM berth-base AS later\n",
            &["berth-base", "later"],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            refs(text),
            Ok(want.iter().map(|w| w.to_string()).collect()),
            "{text}"
        );
    }
}

#[test]
fn the_four_tricks_are_caught() {
    let tricks = [
        "FR\\\nOM b1-web:latest\n",
        "FROM berth-base\nCO\\\nPY --from=b1-web:latest /greeting /g\n",
        "\u{feff}FROM b1-web:latest\n",
        "ARG X=b1\\-web:latest\nFROM $X\n",
    ];
    for text in tricks {
        let found = refs(text).unwrap();
        assert!(found.iter().any(|r| r == FOREIGN), "{text:?}: {found:?}");
    }
}

#[test]
fn what_cannot_be_resolved_is_refused_naming_the_line() {
    let cases: &[(&str, usize)] = &[
        ("FROM berth-base\nCOPY --from=$X /a /b\n", 2),
        ("FROM berth-base\nRUN --mount=from=${X},target=/x true\n", 2),
        ("FROM ${TARGETARCH}-web\n", 1),
        ("ARG X\nFROM ${X%web}\n", 2),
        ("FROM $1\n", 1),
        ("# syntax=evil/frontend\nFROM berth-base\n", 1),
        ("# escape=x\nFROM berth-base\n", 1),
        ("FROM berth-base\n\nONBUILD COPY --from=b1-web /a /b\n", 3),
        ("FROM berth-base\nRUN <<EOF\nno end\n", 2),
        ("FROM a b\n", 1),
        ("FROM base AS 1x\n", 1),
        ("FROM berth-base\nCOPY --from=3 /a /b\n", 2),
        (
            "FROM berth-base\nRUN --mount=\"type=bind,\\\"from=x\\\"\" true\n",
            2,
        ),
    ];
    for (text, line) in cases {
        let err = image_refs(text, &BTreeMap::new()).unwrap_err();
        assert_eq!(err.line, *line, "{text:?}: {err}");
    }
}

/// Every way of writing one `FROM`, `COPY --from` or `RUN --mount from=` of the foreign image:
/// a keyword or flag split by a continuation anywhere, with blanks, comment and empty lines
/// inside the continuation, CRLF endings, a BOM, the backtick escape, case changes, quotes and
/// escapes in the image word, and the image passed through `ARG`s.
fn variants() -> Vec<String> {
    let lines = [
        ("", "FROM", " b1-web:latest"),
        ("FROM berth-base\n", "COPY", " --from=b1-web:latest /a /b"),
        (
            "FROM berth-base\n",
            "RUN",
            " --mount=type=bind,from=b1-web:latest,target=/x true",
        ),
        ("FROM berth-base\n", "COPY --from", "=b1-web:latest /a /b"),
        (
            "FROM berth-base\n",
            "RUN --mount=type=bind,from",
            "=b1-web:latest true",
        ),
    ];
    let joins = [
        "\\\n",
        "\\  \n",
        "\\\t\n",
        "\\\n# c\n",
        "\\\n\n",
        "\\\n  \n   # x\n",
    ];
    let mut out = Vec::new();
    for (before, keyword, rest) in lines {
        for split in 0..=keyword.len() {
            for join in joins {
                let (a, b) = keyword.split_at(split);
                out.push(format!("{before}{a}{join}{b}{rest}\n"));
                out.push(format!("{before}{}{join}{}{rest}\n", a.to_lowercase(), b));
                let tick = join.replace('\\', "`");
                out.push(format!("# escape=`\n{before}{a}{tick}{b}{rest}\n"));
            }
        }
        out.push(format!("\u{feff}{before}{keyword}{rest}\n"));
        out.push(format!("{before}{keyword}{rest}\n").replace('\n', "\r\n"));
        if !keyword.contains(' ') {
            out.push(format!("{before}\t{keyword}\t{}\n", rest.trim_start()));
        }
    }
    let words = [
        "b1-web:latest",
        "b1\\-web:latest",
        "\"b1-web:latest\"",
        "'b1-web':latest",
        "b1-\"web\":lat\\est",
    ];
    for word in words {
        out.push(format!("FROM {word}\n"));
        out.push(format!("FROM berth-base\nCOPY --from={word} /a /b\n"));
        out.push(format!("FROM berth-base\nCOPY --fr\\om={word} /a /b\n"));
        out.push(format!(
            "FROM berth-base\nRUN --mount=type=bind,FROM={word},target=/x true\n"
        ));
        for arg in [
            format!("ARG X={word}\nFROM $X\n"),
            format!("ARG X={word}\nFROM ${{X}}\n"),
            format!("ARG X={word}\nFROM ${{NOPE:-$X}}\n"),
            format!("ARG X={word}\nFROM ${{X:+{word}}}\n"),
            format!("ARG X={word} Y=$X\nFROM $Y\n"),
            format!("ARG X\nFROM ${{X:-{word}}}\n"),
            format!("# escape=`\nARG X={}\nFROM $X\n", word.replace('\\', "`")),
        ] {
            out.push(arg);
        }
    }
    out.push("FROM berth-base\nRUN <<EOF\nEOF\nFROM b1-web:latest\n".into());
    out.push("FROM berth-base\nRUN <<EOF cat\nFROM b1-web:latest\nEOF\n".into());
    out.push("FROM berth-base\nCOPY <<EOF /x\nEOF\nCOPY --from=b1-web:latest /a /b\n".into());
    out
}

#[test]
fn generated_variants_of_the_tricks_are_all_caught() {
    let all = variants();
    assert!(all.len() > 300, "{}", all.len());
    let missed: Vec<&String> = all.iter().filter(|t| !caught(t)).collect();
    assert!(
        missed.is_empty(),
        "{} of {} missed: {missed:#?}",
        missed.len(),
        all.len()
    );
}

/// Mutations of the variants never make the parser panic or loop (a deterministic generator,
/// so a failure reproduces).
#[test]
fn mutated_files_never_panic() {
    let alphabet = [
        '\\', '`', '\n', '"', '\'', '$', '{', '}', '#', ' ', '<', '-', '=', ',', '\r',
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for base in variants() {
        for _ in 0..4 {
            let mut chars: Vec<char> = base.chars().collect();
            for _ in 0..3 {
                let at = (next() as usize) % (chars.len() + 1);
                let c = alphabet[(next() as usize) % alphabet.len()];
                if next() % 2 == 0 && at < chars.len() {
                    chars[at] = c;
                } else {
                    chars.insert(at, c);
                }
            }
            let text: String = chars.into_iter().collect();
            let _ = refs(&text);
            let _ = parse(&text, true);
        }
    }
}
