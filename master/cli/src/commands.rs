//! Every command but `deploy`: one function each, reading or acting through the master's API.

use std::io::{BufRead, BufReader, Write};

use berth_worker_api::ids;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{LogSource, LogsArgs, OpenArgs, PsArgs, RmArgs};
use crate::client::{Client, Record, url_of};
use crate::failure::{Exit, Failure};
use crate::output::{Out, Tone, short};

/// Validates an id before it goes into a URL path.
pub fn valid_id(id: &str) -> Result<(), Failure> {
    ids::validate("id", id).map_err(|e| Failure::usage(e.to_string()))
}

pub fn ps(client: &Client, out: &Out, args: &PsArgs) -> Result<(), Failure> {
    let mut query = Vec::new();
    if let Some(user) = &args.user {
        query.push(("user", user.as_str()));
    }
    if let Some(state) = &args.state {
        query.push(("state", state.as_str()));
    }
    let list = client.json(client.request(Method::GET, "/v1/instances").query(&query))?;
    if out.json {
        out.print_json(&list);
        return Ok(());
    }
    let records = list
        .as_array()
        .map(|a| a.iter().map(Record::parse).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    if records.is_empty() {
        out.note("no instances (berth deploy DIR makes one)");
        return Ok(());
    }
    let rows: Vec<_> = records
        .iter()
        .map(|r| {
            vec![
                (r.id.clone(), Tone::Plain),
                (r.state.clone(), Tone::of_state(&r.state)),
                (worker_name(r), Tone::Plain),
                (format!("{}/{}", r.user, r.project), Tone::Plain),
                (
                    r.endpoints
                        .first()
                        .map(url_of)
                        .unwrap_or_else(|| "-".into()),
                    Tone::Plain,
                ),
                (r.updated_at.clone(), Tone::Dim),
            ]
        })
        .collect();
    out.table(
        &["ID", "STATE", "WORKER", "USER/PROJECT", "URL", "UPDATED"],
        &rows,
    );
    Ok(())
}

fn worker_name(r: &Record) -> String {
    r.worker
        .as_ref()
        .map(|w| {
            if w.node.is_empty() {
                w.id.clone()
            } else {
                w.node.clone()
            }
        })
        .unwrap_or_else(|| "-".into())
}

pub fn status(client: &Client, out: &Out, id: &str) -> Result<(), Failure> {
    valid_id(id)?;
    let value = client.get(&format!("/v1/instances/{id}"))?;
    if out.json {
        out.print_json(&value);
        return Ok(());
    }
    let r = Record::parse(&value)?;
    // Padded before it is painted: the escape codes have no width on a terminal.
    let field = |name: &str, text: String| {
        println!("{} {text}", out.paint(Tone::Bold, &format!("{name:<10}")));
    };
    field("id", r.id.clone());
    field("state", out.paint(Tone::of_state(&r.state), &r.state));
    field("owner", format!("{}/{}", r.user, r.project));
    field(
        "worker",
        r.worker
            .as_ref()
            .map(|w| w.id.clone())
            .unwrap_or_else(|| "-".into()),
    );
    field(
        "commit",
        format!(
            "{} (built {})",
            short(r.commit.as_deref()),
            short(r.built_commit.as_deref())
        ),
    );
    if r.endpoints.is_empty() {
        field("endpoints", "-".into());
    }
    for e in &r.endpoints {
        field(
            "endpoint",
            format!(
                "{} {}/{} -> {}",
                e.service,
                e.container_port,
                e.protocol,
                url_of(e)
            ),
        );
    }
    for s in &r.services {
        let mut text = format!(
            "{} {}",
            s.name,
            out.paint(Tone::of_state(&s.state), &s.state)
        );
        if s.restarts > 0 {
            text.push_str(&format!(", {} restarts", s.restarts));
        }
        if let Some(code) = s.exit_code {
            text.push_str(&format!(", last exit code {code}"));
        }
        field("service", text);
    }
    if let Some(err) = &r.error {
        field("error", out.paint(Tone::Bad, &err.headline()));
        if err.summary().len() < err.message.len() {
            field(
                "log",
                format!("berth logs {id} --ops has the lines before it"),
            );
        }
    }
    field("updated", r.updated_at.clone());
    Ok(())
}

pub fn logs(client: &Client, out: &Out, args: &LogsArgs) -> Result<(), Failure> {
    valid_id(&args.id)?;
    let source = match (args.ops, args.source, &args.service) {
        (true, _, _) => LogSource::Ops,
        (false, Some(source), _) => source,
        (false, None, Some(_)) => LogSource::App,
        (false, None, None) => LogSource::All,
    };
    if source == LogSource::Ops && args.service.is_some() {
        return Err(Failure::usage(
            "--service picks one service's app output; berth's own output (--ops) is per \
             instance",
        ));
    }
    let mut query: Vec<(&str, String)> = vec![
        ("follow", args.follow.to_string()),
        ("source", source.as_str().to_owned()),
    ];
    if let Some(service) = &args.service {
        query.push(("service", service.clone()));
    }
    if let Some(tail) = args.tail {
        query.push(("tail", tail.to_string()));
    }
    if let Some(since) = &args.since {
        query.push(("since", since.clone()));
    }
    if args.timestamps {
        query.push(("timestamps", "true".into()));
    }
    let resp = client.logs(&args.id, &query)?;
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    for line in BufReader::new(resp).lines() {
        let line = line.map_err(|e| {
            Failure::new(
                Exit::Berth,
                "unreachable",
                format!("the log stream broke: {e}"),
            )
        })?;
        let written = if out.json {
            writeln!(stdout, "{}", json!({ "id": args.id, "line": line }))
        } else {
            writeln!(stdout, "{line}")
        };
        // A closed pipe (`berth logs ID | head`) ends the command quietly.
        if written.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// `start`, `stop`: the operation, then the state it left (and the URLs after a start).
pub fn lifecycle(client: &Client, out: &Out, id: &str, op: &str) -> Result<(), Failure> {
    valid_id(id)?;
    let spinner = out.spinner(&format!("{op} {id}"));
    let result = client.post(&format!("/v1/instances/{id}/{op}"));
    spinner.finish_and_clear();
    let value = result?;
    if out.json {
        out.print_json(&value);
        return Ok(());
    }
    let r = Record::parse(&value)?;
    println!("{id} {}", out.paint(Tone::of_state(&r.state), &r.state));
    print_urls(out, &r, None);
    Ok(())
}

pub fn rm(client: &Client, out: &Out, args: &RmArgs) -> Result<(), Failure> {
    valid_id(&args.id)?;
    let spinner = out.spinner(&format!("deleting {}", args.id));
    let req = client
        .request(Method::DELETE, &format!("/v1/instances/{}", args.id))
        .query(&[("keep_code", args.keep_code)]);
    let result = client.json(req);
    spinner.finish_and_clear();
    let value = result?;
    if out.json {
        out.print_json(&value);
        return Ok(());
    }
    let kept = if value["code_kept"] == true {
        " (code kept)"
    } else {
        ""
    };
    println!("{} deleted{kept}", args.id);
    if let Some(note) = value["note"].as_str() {
        out.note(note);
    }
    for line in value["former_workers"].as_array().into_iter().flatten() {
        if let Some(line) = line.as_str() {
            out.note(&format!("former worker {line}"));
        }
    }
    Ok(())
}

pub fn workers(client: &Client, out: &Out) -> Result<(), Failure> {
    let list = client.get("/v1/workers")?;
    if out.json {
        out.print_json(&list);
        return Ok(());
    }
    let empty = Vec::new();
    let workers = list.as_array().unwrap_or(&empty);
    if workers.is_empty() {
        out.note("no workers in the registry (scripts/join-worker.sh adds one)");
        return Ok(());
    }
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<_> = workers
        .iter()
        .map(|w| {
            let healthy = w["healthy"] == true;
            let health = if healthy {
                ("healthy".to_owned(), Tone::Good)
            } else {
                let failing: Vec<String> = w["failing_checks"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default();
                (format!("failing {}", failing.join(", ")), Tone::Bad)
            };
            let capacity = match w["capacity"].as_u64() {
                None | Some(0) => "-".to_owned(),
                Some(c) => c.to_string(),
            };
            vec![
                (text(&w["id"]), Tone::Plain),
                health,
                (format!("{}/{capacity}", text(&w["placed"])), Tone::Plain),
                (text(&w["version"]), Tone::Plain),
                (text(&w["url"]), Tone::Dim),
            ]
        })
        .collect();
    out.table(&["ID", "HEALTH", "PLACED/CAP", "VERSION", "URL"], &rows);
    Ok(())
}

pub fn open(client: &Client, out: &Out, args: &OpenArgs) -> Result<(), Failure> {
    valid_id(&args.id)?;
    let value = client.get(&format!("/v1/instances/{}", args.id))?;
    let r = Record::parse(&value)?;
    let urls: Vec<(String, String)> = r
        .endpoints
        .iter()
        .filter(|e| args.service.as_ref().is_none_or(|s| *s == e.service))
        .map(|e| (e.service.clone(), url_of(e)))
        .collect();
    if urls.is_empty() {
        let which = args
            .service
            .as_ref()
            .map(|s| format!(" for service {s}"))
            .unwrap_or_default();
        return Err(Failure::new(
            Exit::App,
            "no_endpoint",
            format!(
                "instance {} is {} and publishes no port{which}",
                r.id, r.state
            ),
        )
        .with_hint(format!("berth start {} publishes its ports", r.id)));
    }
    if out.json {
        let list: Vec<Value> = urls
            .iter()
            .map(|(service, url)| json!({ "service": service, "url": url }))
            .collect();
        out.print_json(&json!({ "id": r.id, "urls": list }));
    } else if args.browser {
        let (_, url) = &urls[0];
        let browser = std::env::var("BROWSER")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "xdg-open".into());
        let opened = std::process::Command::new(&browser)
            .arg(url)
            .status()
            .map_err(|e| e.to_string())
            .and_then(|s| s.success().then_some(()).ok_or(s.to_string()));
        if let Err(e) = opened {
            return Err(
                Failure::usage(format!("could not open {url} with {browser}: {e}"))
                    .with_hint(format!("berth open {} prints the URL", r.id)),
            );
        }
        out.note(&format!("opened {url}"));
    } else {
        for (_, url) in urls {
            println!("{url}");
        }
    }
    Ok(())
}

/// `service  url` lines for a record's endpoints.
pub fn print_urls(out: &Out, r: &Record, title: Option<&str>) {
    if r.endpoints.is_empty() {
        return;
    }
    if let Some(title) = title {
        println!("{}", out.paint(Tone::Bold, title));
    }
    let width = r
        .endpoints
        .iter()
        .map(|e| e.service.len())
        .max()
        .unwrap_or(0);
    for e in &r.endpoints {
        println!("  {:<width$}  {}", e.service, url_of(e));
    }
}
