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
                (text(&r["uploaded_at"]), Tone::Plain),
                (text(&r["built_at"]), Tone::Dim),
                (
                    r["message"]
                        .as_str()
                        .and_then(|m| m.lines().next())
                        .unwrap_or("")
                        .to_owned(),
                    Tone::Dim,
                ),
            ]
        })
        .collect();
    out.table(&["COMMIT", "", "UPLOADED", "BUILT", "MESSAGE"], &rows);
    Ok(())
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
