//! `releases` and `rollback`: an instance's uploads, newest first, and going back to one.

use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::RollbackArgs;
use crate::client::{Client, Record};
use crate::commands::{print_urls, valid_id};
use crate::failure::Failure;
use crate::output::{Out, Tone, short};

pub fn releases(client: &Client, out: &Out, id: &str) -> Result<(), Failure> {
    valid_id(id)?;
    let list = client.get(&format!("/v1/instances/{id}/releases"))?;
    if out.json {
        out.print_json(&list);
        return Ok(());
    }
    let empty = Vec::new();
    let list = list.as_array().unwrap_or(&empty);
    if list.is_empty() {
        out.note(&format!("instance {id} has no uploads yet"));
        return Ok(());
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let rows: Vec<_> = list
        .iter()
        .map(|r| {
            let mark = match (r["current"] == true, r["images_kept"] == true) {
                (true, _) => ("running".to_owned(), Tone::Good),
                (false, true) => ("built".to_owned(), Tone::Plain),
                (false, false) => ("-".to_owned(), Tone::Dim),
            };
            vec![
                (short(r["commit"].as_str()), Tone::Plain),
                mark,
                (seconds(&text(&r["uploaded_at"])), Tone::Plain),
                (seconds(&text(&r["built_at"])), Tone::Dim),
                (message(r["message"].as_str().unwrap_or("")), Tone::Dim),
            ]
        })
        .collect();
    out.table(&["COMMIT", "", "UPLOADED", "BUILT", "MESSAGE"], &rows);
    Ok(())
}

/// An RFC 3339 time to the second (`built_at` has milliseconds, `uploaded_at` none).
fn seconds(at: &str) -> String {
    match at.split_once('.') {
        Some((whole, rest)) if rest.ends_with('Z') => format!("{whole}Z"),
        _ => at.to_owned(),
    }
}

/// A commit message in the table: its first line, cut to 40 characters, and nothing for the
/// master's own `upload of USER/PROJECT instance ID`, which says nothing the row does not (it
/// made the table wrap on an 80- or 100-column terminal).
fn message(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.starts_with("upload of ") && first.contains(" instance ") {
        return String::new();
    }
    match first.char_indices().nth(39) {
        Some((at, _)) => format!("{}…", &first[..at]),
        None => first.to_owned(),
    }
}

pub fn rollback(client: &Client, out: &Out, args: &RollbackArgs) -> Result<(), Failure> {
    valid_id(&args.id)?;
    let mut req = client
        .request(Method::POST, &format!("/v1/instances/{}/rollback", args.id))
        .query(&[("wait", format!("{}s", args.build_timeout))]);
    if let Some(commit) = &args.commit {
        req = req.json(&json!({ "commit": commit }));
    }
    let spinner = out.spinner(&format!("rolling back {}", args.id));
    let result = client.json(req);
    spinner.finish_and_clear();
    let value = result?;
    if out.json {
        out.print_json(&value);
        return Ok(());
    }
    let r = Record::parse(&value)?;
    let at = value["running_commit"]
        .as_str()
        .or(r.built_commit.as_deref());
    println!(
        "{} {} at {}",
        args.id,
        out.paint(Tone::of_state(&r.state), &r.state),
        short(at)
    );
    print_urls(out, &r, None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_rows_stay_short() {
        assert_eq!(seconds("2026-12-04T18:36:56.156Z"), "2026-12-04T18:36:56Z");
        assert_eq!(seconds("2026-12-04T18:36:55Z"), "2026-12-04T18:36:55Z");
        assert_eq!(seconds("-"), "-");
        assert_eq!(
            message("upload of berth/sample-app instance sample-app"),
            ""
        );
        assert_eq!(
            message("fix the greeting\n\nlonger text"),
            "fix the greeting"
        );
        assert_eq!(message(&"x".repeat(60)), format!("{}…", "x".repeat(39)));
    }
}
