//! `counter-cli --router <HOST:PORT> [--timeout-ms <MS>] [--request-id <CLIENT:SEQ>] [<COMMAND> ...]`
//! (CLI.md, docs/CLI.md).

use clap::Parser;
use counter::command::{self, Parsed};
use counter_net::{CallError, Pool};
use counter_proto::{ClientError, ErrorKind, Msg, RequestId};
use rand::Rng;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Most attempts of one command whose outcome was unknown (each with the same request id).
const MAX_ATTEMPTS: u32 = 8;
/// Longest pause between two attempts.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Command-line client of the counter store.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Commands: incr KEY [DELTA] [--min M] [--max M] | decr KEY [DELTA] [--min M] \
[--max M] | get KEY | reset KEY | set KEY VALUE | cas KEY EXPECTED NEW\n\
With no command, reads one command per line from stdin and answers each with one line."
)]
struct Args {
    /// A router's address.
    #[arg(long)]
    router: String,
    /// How long to wait for each answer, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    timeout_ms: u32,
    /// Request id of the (one) command, for callers that retry across processes: a retry with
    /// the same id is never applied twice. Default: a random client id and a fresh sequence.
    #[arg(long, value_name = "CLIENT:SEQ")]
    request_id: Option<String>,
    /// The command and its arguments (none: read commands from stdin).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

struct Client {
    router: String,
    pool: Pool,
    timeout: Duration,
    /// This process's client id, and the last sequence number it used.
    client: u64,
    last_seq: u64,
    /// The request id came from --request-id: an earlier process may have sent it.
    given_id: bool,
}

impl Client {
    /// A fresh request id: microseconds since the Unix epoch, strictly increasing.
    fn next_request(&mut self) -> RequestId {
        let id = RequestId::next(self.client, self.last_seq);
        self.last_seq = id.seq;
        id
    }

    /// Runs one command, retrying an unknown outcome with the same request id (reads and
    /// commands with an id are safe to retry) until the deadline.
    async fn run(&self, cmd: Parsed) -> Result<Msg, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let retry_safe = cmd.command.op.is_read() || cmd.command.request.is_some();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut result = self.send(&cmd, left).await;
            if let Err(e) = &result {
                // An earlier attempt (ours, or another process's with the same --request-id)
                // may have been applied. With --request-id on a first attempt, "request
                // expired" stays `invalid` (its message says so); an expired request never
                // will be applied, so retrying cannot tell more.
                let earlier = attempt > 1 || (self.given_id && !e.is_expired());
                if let Some(unknown) = e.after_earlier_attempt().filter(|_| earlier) {
                    let last = e.is_expired();
                    result = Err(unknown);
                    if last {
                        return result;
                    }
                }
            }
            match result {
                Err(e) if e.kind == ErrorKind::Unknown && retry_safe && attempt < MAX_ATTEMPTS => {
                    let cap = Duration::from_millis(20u64 << attempt.min(5)).min(BACKOFF_MAX);
                    let pause = rand::thread_rng().gen_range(Duration::ZERO..=cap);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left <= pause + Duration::from_millis(10) {
                        return Err(e);
                    }
                    tracing::debug!(attempt, error = %e, "outcome unknown; retrying");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn send(&self, cmd: &Parsed, left: Duration) -> Result<Msg, ClientError> {
        let ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
        // The router gets most of the budget so its own answer arrives before we give up.
        let msg = Msg::Command {
            key: cmd.key.clone(),
            command: cmd.command,
            timeout_ms: (ms / 10 * 9).max(1),
        };
        match self.pool.call(&self.router, msg, left).await {
            Ok(Msg::Error(e)) => Err(e),
            Ok(answer @ (Msg::Value(_) | Msg::Swapped { .. })) => Ok(answer),
            Ok(other) => Err(ClientError::unknown(format!(
                "unexpected answer from the router: {other:?}"
            ))),
            Err(CallError::NotSent(e)) => Err(ClientError::unavailable(format!(
                "router {}: {e}",
                self.router
            ))),
            Err(CallError::Lost(e)) => Err(ClientError::unknown(format!(
                "router {}: {e}; the command may have been applied",
                self.router
            ))),
        }
    }
}

/// The line printed for an answer: the value, or for `cas` the value and whether it swapped.
fn answer_line(msg: &Msg) -> String {
    match msg {
        Msg::Swapped {
            value,
            swapped: true,
        } => format!("{value} swapped"),
        Msg::Swapped {
            value,
            swapped: false,
        } => format!("{value} unchanged"),
        Msg::Value(v) => v.to_string(),
        other => unreachable!("send() only passes answers on, not {other:?}"),
    }
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Invalid => 2,
        ErrorKind::Unavailable => 3,
        ErrorKind::Unknown => 4,
        ErrorKind::Rejected => 5,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    counter::logging::init("warn");
    let args = Args::parse();
    let mut client = Client {
        router: args.router,
        pool: Pool::new(Duration::from_millis(u64::from(args.timeout_ms))),
        timeout: Duration::from_millis(u64::from(args.timeout_ms)),
        client: rand::thread_rng().gen(),
        last_seq: 0,
        given_id: args.request_id.is_some(),
    };
    let given = match args.request_id.as_deref().map(command::parse_request_id) {
        Some(Err(e)) => {
            eprintln!("counter-cli: {e}");
            return ExitCode::from(exit_code(e.kind));
        }
        Some(Ok(_)) if args.command.is_empty() => {
            eprintln!(
                "counter-cli: invalid: --request-id names one command; give it on the command line"
            );
            return ExitCode::from(exit_code(ErrorKind::Invalid));
        }
        Some(Ok(id)) => Some(id),
        None => None,
    };
    if !args.command.is_empty() {
        let result = match command::parse(&args.command) {
            Ok(mut cmd) => {
                if !cmd.command.op.is_read() {
                    cmd.command.request = Some(given.unwrap_or_else(|| client.next_request()));
                }
                client.run(cmd).await
            }
            Err(e) => Err(e),
        };
        return match result {
            Ok(answer) => {
                println!("{}", answer_line(&answer));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("counter-cli: {e}");
                ExitCode::from(exit_code(e.kind))
            }
        };
    }
    // Pipe mode: one answer line per input line, in order, flushed at once.
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("counter-cli: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let answer = match command::parse_line(&line) {
            Ok(mut cmd) => {
                if !cmd.command.op.is_read() {
                    cmd.command.request = Some(client.next_request());
                }
                client.run(cmd).await
            }
            Err(e) => Err(e),
        };
        let out = match answer {
            Ok(answer) => writeln!(stdout, "{}", answer_line(&answer)),
            Err(e) => writeln!(
                stdout,
                "ERR {} {}",
                e.kind,
                e.message.replace(['\n', '\r'], " ")
            ),
        };
        if out.and_then(|_| stdout.flush()).is_err() {
            // Nobody is reading our answers any more.
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
