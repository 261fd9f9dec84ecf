//! `counter-cli --router <HOST:PORT> [--timeout-ms <MS>] [<COMMAND> ...]` (CLI.md).

use clap::Parser;
use counter::command::{self, Command};
use counter_net::{CallError, Pool};
use counter_proto::{ClientError, ErrorKind, Msg};
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Command-line client of the counter store.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Commands: incr KEY [DELTA] | decr KEY [DELTA] | get KEY | reset KEY\n\
With no command, reads one command per line from stdin and answers each with one line."
)]
struct Args {
    /// A router's address.
    #[arg(long)]
    router: String,
    /// How long to wait for each answer, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    timeout_ms: u32,
    /// The command and its arguments (none: read commands from stdin).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

struct Client {
    router: String,
    pool: Pool,
    timeout: Duration,
}

impl Client {
    async fn run(&self, cmd: Command) -> Result<i64, ClientError> {
        let ms = self.timeout.as_millis() as u32;
        // The router gets most of the budget so its own answer arrives before we give up.
        let msg = Msg::Command {
            key: cmd.key,
            op: cmd.op,
            timeout_ms: (ms / 10 * 9).max(1),
        };
        match self.pool.call(&self.router, msg, self.timeout).await {
            Ok(Msg::Value(v)) => Ok(v),
            Ok(Msg::Error(e)) => Err(e),
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

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Invalid => 2,
        ErrorKind::Unavailable => 3,
        ErrorKind::Unknown => 4,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    counter::logging::init("warn");
    let args = Args::parse();
    let client = Client {
        router: args.router,
        pool: Pool::new(Duration::from_millis(u64::from(args.timeout_ms))),
        timeout: Duration::from_millis(u64::from(args.timeout_ms)),
    };
    if !args.command.is_empty() {
        let result = match command::parse(&args.command) {
            Ok(cmd) => client.run(cmd).await,
            Err(e) => Err(e),
        };
        return match result {
            Ok(v) => {
                println!("{v}");
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
            Ok(cmd) => client.run(cmd).await,
            Err(e) => Err(e),
        };
        let out = match answer {
            Ok(v) => writeln!(stdout, "{v}"),
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
