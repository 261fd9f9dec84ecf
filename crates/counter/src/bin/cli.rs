//! `counter-cli --router <HOST:PORT> [--timeout-ms <MS>] [--request-id <CLIENT:SEQ>] [<COMMAND> ...]`
//! (docs/CLI.md).

use clap::Parser;
use counter::admin::{self, Admin};
use counter::command::{self, Parsed};
use counter_client::{Answer, Client, Error, ErrorKind};
use counter_proto::Msg;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Command-line client of the counter store.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Commands: incr KEY [DELTA] [--min M] [--max M] | decr KEY [DELTA] [--min M] \
[--max M] | get KEY | reset KEY | set KEY VALUE | cas KEY EXPECTED NEW\n\
With no command, reads one command per line from stdin and answers each with one line.\n\
Admin (command line only): cluster status [--json]: every node's reachability, readiness, \
epoch and shards, and how many shards can be served; exit status 0 if all, 3 if not. \
cluster add-node ID ADDR | cluster remove-node ID | cluster replace-node OLD_ID NEW_ID NEW_ADDR: \
change the members online (a new node is started first with `counter-node --id ID --join \
MEMBER_ADDR --listen ADDR --data-dir DIR`); each waits until the change is complete (shards \
moved), prints one line and exits 0; run again after any failure, it resumes."
)]
struct Args {
    /// A router's address.
    #[arg(long)]
    router: String,
    /// How long to wait for each answer, in milliseconds (default 10000; for add-node,
    /// remove-node and replace-node, which move shards, 3600000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    timeout_ms: Option<u32>,
    /// Request id of the (one) command, for callers that retry across processes: a retry with
    /// the same id is never applied twice. Default: a random client id and a fresh sequence.
    #[arg(long, value_name = "CLIENT:SEQ")]
    request_id: Option<String>,
    /// The command and its arguments (none: read commands from stdin).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

/// Runs one parsed command: with the caller's request id, or in a session of the client.
async fn run(
    client: &Client,
    cmd: Parsed,
    given: Option<counter_proto::RequestId>,
) -> Result<Answer, Error> {
    match given {
        Some(id) if !cmd.command.op.is_read() => {
            client.command_with_id(&cmd.key, cmd.command, id).await
        }
        _ => client.command(&cmd.key, cmd.command).await,
    }
}

/// The line printed for an answer: the value, or for `cas` the value and whether it swapped.
fn answer_line(answer: &Answer) -> String {
    match answer {
        Answer::Swapped {
            value,
            swapped: true,
        } => format!("{value} swapped"),
        Answer::Swapped {
            value,
            swapped: false,
        } => format!("{value} unchanged"),
        Answer::Value(v) => v.to_string(),
    }
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Invalid => 2,
        ErrorKind::Unavailable => 3,
        ErrorKind::Unknown => 4,
        ErrorKind::Rejected => 5,
        ErrorKind::Expired => 6,
    }
}

/// `cluster status [--json]`: asks the router, prints its answer; 0 if every shard can be
/// served, 3 if not or if the router cannot be asked.
async fn cluster_status(router: &str, timeout: Duration, json: bool) -> ExitCode {
    let pool = counter_net::Pool::new(timeout);
    let status = match pool.call(router, Msg::Status, timeout).await {
        Ok(Msg::ClusterStatus(status)) => status,
        Ok(Msg::Error(e)) => {
            eprintln!("counter-cli: router {router} answered {e}");
            return ExitCode::from(exit_code(e.kind));
        }
        Ok(other) => {
            eprintln!(
                "counter-cli: unavailable: router {router} answered {} to a status request",
                counter_router::forward::msg_name(&other)
            );
            return ExitCode::from(exit_code(ErrorKind::Unavailable));
        }
        Err(e) => {
            // A router of an earlier build cannot decode the request: it closes the connection.
            let hint = match &e {
                counter_net::CallError::Lost(m) if m.contains("closed") => {
                    " (is it of an earlier build, without cluster status?)"
                }
                _ => "",
            };
            eprintln!("counter-cli: unavailable: router {router}: {e}{hint}");
            return ExitCode::from(exit_code(ErrorKind::Unavailable));
        }
    };
    if json {
        println!("{}", admin::json(router, &status));
    } else {
        print!("{}", admin::table(&status));
    }
    ExitCode::from(admin::exit_status(&status))
}

/// `cluster add-node | remove-node | replace-node`: the router hands it to a member, which
/// answers when the change is complete.
async fn cluster_change(
    router: &str,
    timeout: Duration,
    change: counter_proto::Change,
) -> ExitCode {
    let pool = counter_net::Pool::new(timeout.min(Duration::from_secs(5)));
    match pool.call(router, Msg::Admin(change.clone()), timeout).await {
        Ok(Msg::AdminDone(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Msg::Error(e)) => {
            eprintln!("counter-cli: {e}");
            ExitCode::from(exit_code(e.kind))
        }
        Ok(other) => {
            eprintln!(
                "counter-cli: unavailable: router {router} answered {} to cluster {change}",
                counter_router::forward::msg_name(&other)
            );
            ExitCode::from(exit_code(ErrorKind::Unavailable))
        }
        Err(counter_net::CallError::NotSent(e)) => {
            eprintln!("counter-cli: unavailable: router {router}: {e}; nothing changed");
            ExitCode::from(exit_code(ErrorKind::Unavailable))
        }
        Err(counter_net::CallError::Lost(e)) => {
            eprintln!(
                "counter-cli: unknown: router {router}: {e}; the change may be under way or done: \
                 run `counter-cli cluster {change}` again (it resumes, or says it is done)"
            );
            ExitCode::from(exit_code(ErrorKind::Unknown))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    counter::logging::init("warn");
    let args = Args::parse();
    let timeout = Duration::from_millis(u64::from(args.timeout_ms.unwrap_or(10_000)));
    if let Some(admin) = admin::parse(&args.command) {
        if args.request_id.is_some() {
            eprintln!("counter-cli: invalid: --request-id names a key command, not cluster status");
            return ExitCode::from(exit_code(ErrorKind::Invalid));
        }
        return match admin {
            Ok(Admin::Status { json }) => cluster_status(&args.router, timeout, json).await,
            Ok(Admin::Change(change)) => {
                let timeout =
                    Duration::from_millis(u64::from(args.timeout_ms.unwrap_or(3_600_000)));
                cluster_change(&args.router, timeout, change).await
            }
            Err(e) => {
                eprintln!("counter-cli: {e}");
                ExitCode::from(exit_code(e.kind))
            }
        };
    }
    let mut builder = Client::builder([args.router]).timeout(timeout);
    if !args.command.is_empty() {
        // One command: a short session (the cluster grants at least 4 x its clock skew), so
        // that keys forget this process soon after it ends; long enough for the command's
        // retries to end before it is renewed.
        builder = builder.session_life(timeout * 2);
    }
    let client = builder.build();
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
            Ok(cmd) => run(&client, cmd, given).await,
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
            Ok(cmd) => run(&client, cmd, None).await,
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
