//! The kubectl plugin: `kubectl dealertenant trace NAME [-o wide|json]` (kubectl runs any
//! `kubectl-*` binary on the PATH). The same as `dealertenant-operator trace`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use dealertenant_operator::trace::{Output, command};

#[derive(Parser)]
#[command(
    name = "kubectl dealertenant",
    version,
    about = "Inspect DealerTenants: `kubectl dealertenant trace NAME`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show one tenant's whole stack as a tree. Exit status 0 when the tenant is Ready, 1
    /// when it is not, 2 when it cannot be read.
    Trace {
        /// The DealerTenant's name.
        name: String,
        /// `wide` adds each line's message; `json` prints the tree as JSON.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Wide,
    Json,
}

fn main() -> ExitCode {
    let Command::Trace { name, output } = Cli::parse().command;
    command(
        &name,
        match output {
            Format::Text => Output::Text,
            Format::Wide => Output::Wide,
            Format::Json => Output::Json,
        },
    )
}
