//! `berth-forward`: `serve --port P... --target T [--retry-ms N]` forwards each TCP connection
//! on port P to T:P; `set T`, `pause SECS`, `drain SECS` and `status` talk to the serving process (run them
//! with `docker exec`). See the library's doc.

use std::process::ExitCode;
use std::time::Duration;

use berth_forward::{CONTROL, Options, listen, send, serve};

const USAGE: &str = "usage: berth-forward serve --port P [--port P...] --target HOST [--retry-ms N]\n       berth-forward set HOST | pause SECS | drain SECS | status";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["serve", rest @ ..] => run(rest),
        ["set", target] => send(CONTROL, &format!("set {target}")).map(|r| println!("{r}")),
        ["pause", secs] => send(CONTROL, &format!("pause {secs}")).map(|r| println!("{r}")),
        ["drain", secs] => send(CONTROL, &format!("drain {secs}")).map(|r| println!("{r}")),
        ["status"] => send(CONTROL, "status").map(|r| println!("{r}")),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-forward: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let mut ports = Vec::new();
    let mut target = None;
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| bad(&format!("{flag} needs a value")))?;
        match *flag {
            "--port" => ports.push(value.parse::<u16>().map_err(|_| bad("bad --port"))?),
            "--target" => target = Some(value.to_string()),
            "--retry-ms" => {
                opts.retry =
                    Duration::from_millis(value.parse().map_err(|_| bad("bad --retry-ms"))?)
            }
            _ => return Err(bad(USAGE)),
        }
    }
    let target = target.ok_or_else(|| bad("--target is needed"))?;
    if ports.is_empty() {
        return Err(bad("at least one --port is needed"));
    }
    let listeners = ports
        .iter()
        .map(|p| listen(*p).map(|l| (l, Some(*p))))
        .collect::<std::io::Result<Vec<_>>>()?;
    serve(listeners, &target, &opts)?.wait();
    Ok(())
}
