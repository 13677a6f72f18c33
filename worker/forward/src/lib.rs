//! berth's forwarder: one per service that publishes TCP host ports, in a container of its own
//! (`FROM scratch`) that holds the host port bindings. Each accepted connection goes to the
//! current target (a host name on the stack network or an IP) on the same port; `set` moves new
//! connections to another target at once while those already open carry on, and `drain` waits
//! until none to an earlier target is left. `pause SECS` holds new connections (accepted, not
//! yet forwarded) until the next `set` or for SECS at most, so a target can be replaced
//! stop-first without refusing anyone or cutting a request in flight (pause, drain, replace,
//! set). A connection that cannot reach its target is retried
//! (the target is read again on each try) for `retry` before it is closed, so a short gap (a
//! stop-first restart) delays connections instead of refusing them. The target is kept in
//! [`TARGET_FILE`] so a restarted forwarder goes on where it was. The commands reach the serving
//! process through an abstract Unix socket, which lives in the container's network namespace
//! (`docker exec` shares it) and needs no file system.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Where the serving process keeps its current target.
pub const TARGET_FILE: &str = "/berth-forward.target";

/// The default name of the control socket (abstract: no file).
pub const CONTROL: &str = "berth-forward";

/// How the serving process runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The abstract socket name the commands use.
    pub control: String,
    /// How long a connection keeps trying to reach a target.
    pub retry: Duration,
    /// Where the current target is kept (none: not kept).
    pub target_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            control: CONTROL.to_owned(),
            retry: Duration::from_secs(5),
            target_file: Some(PathBuf::from(TARGET_FILE)),
        }
    }
}

/// The current target and the connections still open, by the generation of the target they
/// went to (each `set` starts a generation).
#[derive(Debug, Default)]
struct State {
    target: String,
    generation: u64,
    open: HashMap<u64, usize>,
    /// New connections wait until then (or the next `set`).
    paused_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a connection closes.
    closed: Condvar,
    /// Signalled when a pause ends.
    resumed: Condvar,
}

impl Shared {
    fn current(&self) -> (String, u64) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.target.clone(), s.generation)
    }

    /// Waits while new connections are paused.
    fn unpaused(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(until) = s.paused_until {
            let now = Instant::now();
            if now >= until {
                s.paused_until = None;
                break;
            }
            s = self
                .resumed
                .wait_timeout(s, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn opened(&self, generation: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s.open.entry(generation).or_default() += 1;
    }

    fn done(&self, generation: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.open.get_mut(&generation) {
            *n -= 1;
            if *n == 0 {
                s.open.remove(&generation);
            }
        }
        self.closed.notify_all();
    }

    /// Connections open to targets before the current one.
    fn earlier(s: &State) -> usize {
        s.open
            .iter()
            .filter(|(g, _)| **g < s.generation)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A running forwarder (what `serve` starts), for the caller to wait on.
#[derive(Debug)]
pub struct Forwarder {
    threads: Vec<thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Waits for ever (the listeners never end on their own).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts forwarding: each listener's connections go to the target on `port` (the listener's
/// own port when it is `None`), and the control socket answers commands. The target comes from
/// the target file when it holds one, else `target`.
pub fn serve(
    listeners: Vec<(TcpListener, Option<u16>)>,
    target: &str,
    opts: &Options,
) -> io::Result<Forwarder> {
    let kept = opts
        .target_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let target = kept.unwrap_or_else(|| target.to_owned());
    let shared = Arc::new(Shared::default());
    shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .target = target.clone();
    eprintln!("berth-forward: forwarding to {target}");
    let control = UnixListener::bind_addr(&UnixAddr::from_abstract_name(&opts.control)?)?;
    let mut threads = Vec::new();
    {
        let (shared, opts) = (shared.clone(), opts.clone());
        threads.push(thread::spawn(move || answer(control, &shared, &opts)));
    }
    for (listener, port) in listeners {
        let port = match port {
            Some(p) => p,
            None => listener.local_addr()?.port(),
        };
        let (shared, retry) = (shared.clone(), opts.retry);
        threads.push(thread::spawn(move || {
            accept(listener, port, &shared, retry)
        }));
    }
    Ok(Forwarder { threads })
}

fn accept(listener: TcpListener, port: u16, shared: &Arc<Shared>, retry: Duration) {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("berth-forward: accept on {port}: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let shared = shared.clone();
        thread::spawn(move || {
            if let Err(e) = forward(client, port, &shared, retry) {
                eprintln!("berth-forward: connection on {port}: {e}");
            }
        });
    }
}

/// Connects to the current target (again on failure, reading the target anew, until `retry`
/// has passed), then copies both ways until both sides are done.
fn forward(client: TcpStream, port: u16, shared: &Shared, retry: Duration) -> io::Result<()> {
    shared.unpaused();
    let until = Instant::now() + retry;
    let mut pause = Duration::from_millis(5);
    let (upstream, generation) = loop {
        let (target, generation) = shared.current();
        match connect(&target, port) {
            Ok(s) => break (s, generation),
            Err(e) if Instant::now() >= until => {
                return Err(io::Error::new(e.kind(), format!("{target}:{port}: {e}")));
            }
            Err(_) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    };
    shared.opened(generation);
    let result = pipe(client, upstream);
    shared.done(generation);
    result
}

fn connect(target: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in (target, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn pipe(client: TcpStream, upstream: TcpStream) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let back = thread::spawn(move || copy_half(u2, c2));
    let there = copy_half(client, upstream);
    let back = back.join().unwrap_or(Ok(()));
    there.and(back)
}

/// Copies `from` into `to` until `from` ends, then ends `to`'s sending side.
fn copy_half(mut from: TcpStream, mut to: TcpStream) -> io::Result<()> {
    let result = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
    result.map(|_| ())
}

/// Answers commands on the control socket, one line each: `set TARGET`, `drain SECS`,
/// `status`.
fn answer(control: UnixListener, shared: &Arc<Shared>, opts: &Options) {
    for conn in control.incoming() {
        let Ok(conn) = conn else { continue };
        let (shared, opts) = (shared.clone(), opts.clone());
        thread::spawn(move || {
            let _ = command(conn, &shared, &opts);
        });
    }
}

fn command(conn: UnixStream, shared: &Shared, opts: &Options) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let reply = match (words.next(), words.next()) {
        (Some("set"), Some(target)) => set(shared, opts, target),
        (Some("pause"), Some(secs)) => match secs.parse::<f64>() {
            Ok(secs) if secs >= 0.0 && secs.is_finite() => {
                pause(shared, Duration::from_secs_f64(secs))
            }
            _ => format!("error: bad seconds {secs:?}"),
        },
        (Some("drain"), Some(secs)) => match secs.parse::<f64>() {
            Ok(secs) if secs >= 0.0 && secs.is_finite() => {
                drain(shared, Duration::from_secs_f64(secs))
            }
            _ => format!("error: bad seconds {secs:?}"),
        },
        (Some("status"), None) => {
            let s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let open: usize = s.open.values().sum();
            format!(
                "ok target {} open {open} earlier {}",
                s.target,
                Shared::earlier(&s)
            )
        }
        _ => format!("error: unknown command {:?}", line.trim()),
    };
    let mut conn = conn;
    writeln!(conn, "{reply}")
}

fn set(shared: &Shared, opts: &Options, target: &str) -> String {
    if target.is_empty() || target.len() > 253 {
        return "error: bad target".to_owned();
    }
    // A name that does not resolve is refused before anything switches.
    if let Err(e) = (target, 1).to_socket_addrs() {
        return format!("error: {target} does not resolve: {e}");
    }
    if let Some(file) = &opts.target_file {
        let tmp = file.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, target).and_then(|()| std::fs::rename(&tmp, file)) {
            return format!("error: cannot keep the target in {}: {e}", file.display());
        }
    }
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if s.target != target {
        s.target = target.to_owned();
        s.generation += 1;
    }
    s.paused_until = None;
    shared.resumed.notify_all();
    eprintln!("berth-forward: forwarding to {target}");
    format!("ok target {target} earlier {}", Shared::earlier(&s))
}

/// Holds new connections for `limit` at most (until the next `set`); the connections open now
/// count as earlier ones for `drain`.
fn pause(shared: &Shared, limit: Duration) -> String {
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    s.generation += 1;
    s.paused_until = Some(Instant::now() + limit);
    eprintln!("berth-forward: new connections paused");
    format!("ok paused earlier {}", Shared::earlier(&s))
}

fn drain(shared: &Shared, limit: Duration) -> String {
    let until = Instant::now() + limit;
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let left = Shared::earlier(&s);
        let now = Instant::now();
        if left == 0 || now >= until {
            return format!("ok earlier {left}");
        }
        s = shared
            .closed
            .wait_timeout(s, until - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Sends one command to the serving process and returns its answer (an `error: ...` answer is
/// an error).
pub fn send(control: &str, command: &str) -> io::Result<String> {
    let mut conn = UnixStream::connect_addr(&UnixAddr::from_abstract_name(control)?)?;
    writeln!(conn, "{command}")?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply)?;
    let reply = reply.trim().to_owned();
    match reply.strip_prefix("error: ") {
        Some(e) => Err(io::Error::other(e.to_owned())),
        None if reply.is_empty() => Err(io::Error::other("no answer")),
        None => Ok(reply),
    }
}

/// Binds `0.0.0.0:port` for `serve`.
pub fn listen(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A backend answering each connection with `name` once, then closing.
    fn backend(name: &'static str) -> TcpListener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = l.try_clone().unwrap();
        thread::spawn(move || {
            for c in l2.incoming() {
                let mut c = c.unwrap();
                thread::spawn(move || {
                    let mut buf = [0u8; 16];
                    let n = c.read(&mut buf).unwrap_or(0);
                    if n > 0 {
                        let _ = c.write_all(name.as_bytes());
                    }
                });
            }
        });
        l
    }

    fn ask(port: u16) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"hi").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn connections_follow_the_target_and_earlier_ones_drain() {
        let a = backend("a");
        let port = a.local_addr().unwrap().port();
        // A second backend on the same port, on another loopback address.
        let b = TcpListener::bind(("127.0.0.2", port)).unwrap();
        let b2 = b.try_clone().unwrap();
        thread::spawn(move || {
            for c in b2.incoming() {
                let mut c = c.unwrap();
                let mut buf = [0u8; 16];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"b");
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_port = front.local_addr().unwrap().port();
        let opts = Options {
            control: format!("berth-forward-test-{}", std::process::id()),
            retry: Duration::from_millis(300),
            target_file: None,
        };
        let _f = serve(vec![(front, Some(port))], "127.0.0.1", &opts).unwrap();
        assert_eq!(ask(front_port), "a");

        // A connection held open to `a` across the switch.
        let mut held = TcpStream::connect(("127.0.0.1", front_port)).unwrap();
        thread::sleep(Duration::from_millis(50));
        let answer = send(&opts.control, "set 127.0.0.2").unwrap();
        assert_eq!(answer, "ok target 127.0.0.2 earlier 1");
        assert_eq!(ask(front_port), "b");
        assert_eq!(
            send(&opts.control, "drain 0.05").unwrap(),
            "ok earlier 1",
            "the held connection is still open"
        );
        held.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        held.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"a", "the open connection stayed on the old target");
        drop(held);
        assert_eq!(send(&opts.control, "drain 5").unwrap(), "ok earlier 0");

        // Unknown names and commands are refused; the target stays.
        assert!(send(&opts.control, "set no-such-host.invalid").is_err());
        assert!(send(&opts.control, "jump").is_err());
        assert!(
            send(&opts.control, "status")
                .unwrap()
                .starts_with("ok target 127.0.0.2 ")
        );
        drop(a);
    }

    #[test]
    fn a_missing_target_is_retried_until_it_listens() {
        // A free port with nothing on it yet.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_port = front.local_addr().unwrap().port();
        let opts = Options {
            control: format!("berth-forward-retry-{}", std::process::id()),
            retry: Duration::from_secs(5),
            target_file: None,
        };
        let _f = serve(vec![(front, Some(port))], "127.0.0.1", &opts).unwrap();
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 2];
            c.read_exact(&mut buf).unwrap();
            c.write_all(b"late").unwrap();
        });
        assert_eq!(ask(front_port), "late");
        late.join().unwrap();
    }

    #[test]
    fn a_pause_holds_new_connections_until_the_next_set() {
        let a = backend("a");
        let port = a.local_addr().unwrap().port();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_port = front.local_addr().unwrap().port();
        let opts = Options {
            control: format!("berth-forward-pause-{}", std::process::id()),
            retry: Duration::from_millis(100),
            target_file: None,
        };
        let _f = serve(vec![(front, Some(port))], "127.0.0.1", &opts).unwrap();
        assert_eq!(
            send(&opts.control, "pause 30").unwrap(),
            "ok paused earlier 0"
        );
        let started = Instant::now();
        let waiting = thread::spawn(move || ask(front_port));
        thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "a paused connection went through");
        send(&opts.control, "set 127.0.0.1").unwrap();
        assert_eq!(waiting.join().unwrap(), "a");
        assert!(started.elapsed() < Duration::from_secs(30));
        // A pause ends on its own too.
        send(&opts.control, "pause 0.2").unwrap();
        assert_eq!(ask(front_port), "a");
    }

    #[test]
    fn the_kept_target_wins_over_the_argument() {
        let dir = std::env::temp_dir().join(format!("berth-forward-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("target");
        std::fs::write(&file, "127.0.0.3\n").unwrap();
        let opts = Options {
            control: format!("berth-forward-kept-{}", std::process::id()),
            retry: Duration::from_millis(10),
            target_file: Some(file.clone()),
        };
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let _f = serve(vec![(front, None)], "127.0.0.1", &opts).unwrap();
        assert!(
            send(&opts.control, "status")
                .unwrap()
                .starts_with("ok target 127.0.0.3 ")
        );
        send(&opts.control, "set 127.0.0.4").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "127.0.0.4");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
