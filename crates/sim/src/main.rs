//! `counter-sim`: runs seeded simulations and checks each history.
//!
//!     counter-sim [--nodes 3|5] [--seed S | --seeds N [--from S] | --forever]
//!                 [--mutation none|promise-not-persisted|retry-ambiguous|read-one-replica|
//!                             forget-request-ids|quiet-read-any-reply|
//!                             expired-means-not-applied|renew-late|skip-rescan|
//!                             old-votes-count|drop-before-commit|no-fence|
//!                             floor-no-promise]
//!                 [--setting cluster|hostile|sessions|crowded|outage|membership|cold] [--hostile]
//!                 [--request-ids] [--clock-skew TICKS] [--batch-window TICKS] [--verbose]
//!                 [--keep-going]
//!
//! Exits 1 at the first history that is not linearizable (or, where none may be, at the first
//! live client answered expired), printing the seed, the replay command and a counterexample.
//! With `--keep-going`, runs every seed and lists the failing ones (how often a planted bug is
//! caught), exiting 1 if any failed.

use counter_check::Verdict;
use counter_sim::{run, Config, Mutation};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut nodes = vec![3, 5];
    let mut from = 0u64;
    let mut count = Some(1000u64);
    let mut verbose = false;
    let mut setting = "cluster".to_string();
    let mut request_ids = false;
    let mut clock_skew = None;
    let mut batch_window = None;
    let mut mutation = Mutation::None;
    let mut keep_going = false;
    let mut failed = 0u64;
    let mut i = 0;
    let value = |i: usize| -> &str {
        args.get(i + 1).map(String::as_str).unwrap_or_else(|| {
            eprintln!("counter-sim: {} needs a value", args[i]);
            std::process::exit(2)
        })
    };
    let number = |s: &str| -> u64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("counter-sim: not a number: {s}");
            std::process::exit(2)
        })
    };
    while i < args.len() {
        match args[i].as_str() {
            "--nodes" => {
                nodes = vec![number(value(i)) as usize];
                i += 1;
            }
            "--seed" => {
                from = number(value(i));
                count = Some(1);
                i += 1;
            }
            "--seeds" => {
                count = Some(number(value(i)));
                i += 1;
            }
            "--from" => {
                from = number(value(i));
                i += 1;
            }
            "--forever" => count = None,
            "--verbose" => verbose = true,
            "--keep-going" => keep_going = true,
            "--hostile" => setting = "hostile".into(),
            "--setting" => {
                setting = value(i).to_string();
                if Config::setting(&setting, 3).is_none() {
                    eprintln!("counter-sim: unknown setting {setting}");
                    return ExitCode::from(2);
                }
                i += 1;
            }
            "--clock-skew" => {
                clock_skew = Some(number(value(i)));
                i += 1;
            }
            "--request-ids" => request_ids = true,
            "--batch-window" => {
                batch_window = Some(number(value(i)));
                i += 1;
            }
            "--mutation" => {
                mutation = match Mutation::named(value(i)) {
                    Some(m) => m,
                    None => {
                        eprintln!("counter-sim: unknown mutation {}", value(i));
                        return ExitCode::from(2);
                    }
                };
                i += 1;
            }
            other => {
                eprintln!("counter-sim: unknown argument {other} (see the source's doc comment)");
                return ExitCode::from(2);
            }
        }
        i += 1;
    }
    let mut seed = from;
    let mut runs = 0u64;
    loop {
        if count.is_some_and(|c| seed >= from + c) {
            break;
        }
        for &n in &nodes {
            let mut cfg = Config::setting(&setting, n).expect("checked");
            cfg.mutation = mutation;
            cfg.request_ids |= request_ids;
            if let Some(skew) = clock_skew {
                cfg.clock_skew = skew;
            }
            if let Some(window) = batch_window {
                cfg.batch_window = window;
            }
            let r = run(seed, &cfg);
            runs += 1;
            if verbose {
                for op in &r.history {
                    println!("{op}");
                }
                println!("seed {seed} nodes {n}: {:?}", r.stats);
            }
            if let Some(problem) = r.problem(&cfg) {
                if keep_going {
                    println!("FAILED: seed {seed} ({n} nodes)");
                    failed += 1;
                    continue;
                }
                println!("FAILED: {problem}");
                println!("stats: {:?}", r.stats);
                return ExitCode::FAILURE;
            }
            match r.verdict {
                Verdict::Linearizable | Verdict::Violation(_) => {}
                Verdict::Inconclusive { key, steps } => {
                    println!(
                        "seed {seed}, {n} nodes: check of {key} inconclusive after {steps} steps"
                    );
                }
            }
        }
        if runs.is_multiple_of(1000) && !verbose {
            eprintln!("{runs} runs, {failed} failed (seed {seed})");
        }
        seed += 1;
    }
    if failed > 0 {
        println!("{failed} of {runs} runs failed from seed {from}");
        return ExitCode::FAILURE;
    }
    println!("{runs} runs from seed {from}: all linearizable, no live client refused");
    ExitCode::SUCCESS
}
