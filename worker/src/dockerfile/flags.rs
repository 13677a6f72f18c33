//! Builder flags at the start of an instruction's arguments (`--from=x`, `--mount=...`), read as
//! BuildKit reads them: words starting with `--`, quotes removed, `\` escaping the next character
//! (always `\`, whatever the escape directive says), a lone `--` ending the flags.

/// The arguments after the flags, and the flags without their `--`.
pub(super) fn extract(line: &str) -> Result<(String, Vec<String>), String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut i = 0;
    let finish = |word: &str, flags: &mut Vec<String>| -> Result<(), String> {
        if !word.is_ascii() {
            return Err(format!(
                "builder flag {word:?} holds non-ASCII characters, which BuildKit reads byte by byte"
            ));
        }
        flags.push(word.strip_prefix("--").unwrap_or(word).to_owned());
        Ok(())
    };
    while i <= chars.len() {
        let Some(&(at, c)) = chars.get(i) else {
            if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
                finish(&word, &mut flags)?;
            }
            break;
        };
        match phase {
            Phase::Spaces => {
                if c.is_whitespace() {
                    i += 1;
                    continue;
                }
                let next = chars.get(i + 1).map(|&(_, c)| c);
                if c != '-' || next != Some('-') {
                    return Ok((line[at..].trim().to_owned(), flags));
                }
                phase = Phase::Word;
            }
            Phase::Word => {
                if c.is_whitespace() {
                    if word == "--" {
                        return Ok((line[at..].trim().to_owned(), flags));
                    }
                    if blank_ok || !word.is_empty() {
                        finish(&word, &mut flags)?;
                    }
                    word.clear();
                    blank_ok = false;
                    phase = Phase::Spaces;
                    i += 1;
                    continue;
                }
                if c == '\'' || c == '"' {
                    phase = Phase::Quote(c);
                    blank_ok = true;
                    i += 1;
                    continue;
                }
                if c == '\\' {
                    i += 1;
                    match chars.get(i) {
                        Some(&(_, escaped)) => word.push(escaped),
                        None => continue,
                    }
                    i += 1;
                    continue;
                }
                word.push(c);
                i += 1;
            }
            Phase::Quote(quote) => {
                if c == quote {
                    phase = Phase::Word;
                    i += 1;
                    continue;
                }
                if c == '\\' {
                    i += 1;
                    match chars.get(i) {
                        Some(&(_, escaped)) => word.push(escaped),
                        None => {
                            phase = Phase::Word;
                            continue;
                        }
                    }
                    i += 1;
                    continue;
                }
                word.push(c);
                i += 1;
            }
        }
    }
    Ok((String::new(), flags))
}

#[cfg(test)]
mod tests {
    use super::extract;

    #[test]
    fn flags_are_unquoted_and_unescaped() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("a b", "a b", &[]),
            ("--from=x /a /b", "/a /b", &["from=x"]),
            ("--fr\\om=x /a /b", "/a /b", &["from=x"]),
            (
                "--from=\"x\" --chown='1 2' a b",
                "a b",
                &["from=x", "chown=1 2"],
            ),
            ("--\"from\"=x a", "a", &["from=x"]),
            ("-- --from=x a", "--from=x a", &[]),
            ("--from=x", "", &["from=x"]),
            (
                "  --mount=type=bind,from=y  true",
                "true",
                &["mount=type=bind,from=y"],
            ),
        ];
        for (line, args, flags) in cases {
            let (a, f) = extract(line).unwrap();
            assert_eq!(
                (a.as_str(), f),
                (
                    *args,
                    flags.iter().map(|s| s.to_string()).collect::<Vec<_>>()
                ),
                "{line}"
            );
        }
        assert!(extract("--from=b\u{e9} a").is_err());
    }
}
