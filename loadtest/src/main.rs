//! `merchant-loadgen`: the load-test kit's own tool. `data` writes the request files the ghz configs in
//! `loadtest/ghz/` use, deterministically (same seed, same files on every machine).
mod data;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "merchant-loadgen", about = "Load-test kit for merchant-edge")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the ghz data files (JSON arrays of requests, used round-robin by ghz).
    Data {
        /// Where to write the files.
        #[arg(long, default_value = "loadtest/data")]
        out: PathBuf,
        /// Merchants the simulator under test holds (IDs 898 + index, index below this).
        #[arg(long, default_value_t = 100_000)]
        merchants: u64,
        /// Requests per file (ghz cycles through them).
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Data { out, merchants, requests, seed } => match data::write_all(&out, merchants, requests, seed) {
            Ok(written) => {
                for (file, count) in written {
                    println!("{}: {count} requests", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("merchant-loadgen data: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
