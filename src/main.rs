//! Command line: `run`, `crd`, `validate`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dealertenant_operator::api::validate;
use dealertenant_operator::config::{CONFIG_ENV, OperatorConfig};

#[derive(Parser)]
#[command(
    name = "dealertenant-operator",
    version,
    about = "One DealerTenant becomes a customer's isolated, EU-only stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of the current kube context (or in-cluster).
    Run {
        /// Operator configuration file (YAML). Built-in defaults when absent.
        #[arg(long, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "DEALERTENANT_LOG_JSON")]
        log_json: bool,
        /// Install or update the DealerTenant CRD before starting (needs permission to
        /// write CustomResourceDefinitions; for development clusters).
        #[arg(long)]
        install_crd: bool,
    },
    /// Print the DealerTenant CustomResourceDefinition as YAML.
    Crd,
    /// Check DealerTenant manifests offline, with the rules the API server applies.
    Validate {
        /// Manifest files (YAML, several documents allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", dealertenant_operator::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate_files(&files),
        Command::Run {
            config,
            log_json,
            install_crd,
        } => {
            init_logging(log_json);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(e.into()),
            };
            match runtime.block_on(run(config, install_crd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e}");
    let root = e.root_cause().to_string();
    if root != e.to_string() {
        eprintln!("  cause: {root}");
    }
    ExitCode::FAILURE
}

fn validate_files(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        let shown = file.display();
        let text = match std::fs::read(file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    println!("{shown}: the file is not UTF-8 text");
                    ok = false;
                    continue;
                }
            },
            Err(e) => {
                println!("{shown}: cannot read: {e}");
                ok = false;
                continue;
            }
        };
        match validate::validate_text(&text) {
            Err(problem) => {
                println!("{shown}: {problem}");
                ok = false;
            }
            Ok(docs) => {
                for (label, problems) in docs {
                    let prefix = if label.is_empty() {
                        shown.to_string()
                    } else {
                        format!("{shown} ({label})")
                    };
                    for p in &problems {
                        println!("{prefix}: {p}");
                    }
                    if problems.is_empty() {
                        eprintln!("{prefix}: valid");
                    }
                    ok &= problems.is_empty();
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(config: Option<PathBuf>, install_crd: bool) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => OperatorConfig::load(&path)?,
        None => OperatorConfig::default(),
    };
    let client = kube::Client::try_default().await.context(
        "no Kubernetes cluster is reachable: set KUBECONFIG (or ~/.kube/config) to a cluster, \
         or run inside a Pod with a ServiceAccount",
    )?;
    // Check the connection now rather than on the first watch.
    client
        .apiserver_version()
        .await
        .context("the Kubernetes API server named by the current kube context does not answer")?;
    if install_crd {
        dealertenant_operator::controller::install_crd(&client).await?;
    }
    dealertenant_operator::controller::run(client, config).await
}
