//! Command line: `run`, `crd`, `validate`, `plan`, `processors`, `trace`, ...
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dealertenant_operator::api::{DealerTenant, validate};
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
        /// Install or update the DealerTenant CRD, and create the operator namespace, before
        /// starting (needs permission to write CRDs and Namespaces; for development clusters).
        #[arg(long)]
        install_crd: bool,
        /// Where to serve `/metrics` (Prometheus) and `/healthz`.
        #[arg(
            long,
            env = "DEALERTENANT_METRICS_ADDR",
            default_value = "127.0.0.1:9464"
        )]
        metrics_addr: std::net::SocketAddr,
        /// Reconcile only while holding the leader Lease in the operator namespace, so that
        /// several replicas can run (default). `--leader-election false` is for a single
        /// process on a development cluster.
        #[arg(
            long,
            env = "DEALERTENANT_LEADER_ELECTION",
            default_value_t = true,
            action = clap::ArgAction::Set
        )]
        leader_election: bool,
        /// Name of the leader Lease (coordination.k8s.io/v1) in the operator namespace.
        #[arg(
            long,
            env = "DEALERTENANT_LEASE_NAME",
            default_value = "dealertenant-operator"
        )]
        lease_name: String,
    },
    /// Print the DealerTenant CustomResourceDefinition as YAML.
    Crd,
    /// Print the built-in default operator configuration as YAML.
    DefaultConfig,
    /// Print the configuration reference (every key, its type, default and meaning) as
    /// Markdown, generated from the configuration types; the README holds a copy.
    ConfigReference,
    /// Print the ValidatingAdmissionPolicy and its binding as YAML, with the rules of the
    /// operator configuration's `thirdCountryProcessors`.
    AdmissionPolicy {
        /// Operator configuration to take `thirdCountryProcessors` from (default: the
        /// built-in configuration, or DEALERTENANT_CONFIG).
        #[arg(long, env = "DEALERTENANT_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides the configuration's `thirdCountryProcessors`.
        #[arg(long, value_enum)]
        third_country_processors: Option<Policy>,
    },
    /// Print every resource the operator would create for a manifest (offline, a dry run).
    Plan {
        /// The DealerTenant manifest.
        file: PathBuf,
        /// Operator configuration; the built-in defaults when absent.
        #[arg(long, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// List the processors that hold each tenant's data: offline from manifests, or from the
    /// live cluster (the tenants' status) when no file is given.
    Processors {
        /// DealerTenant manifests; the live cluster when none is given.
        files: Vec<PathBuf>,
        /// Operator configuration (for the catalog and the policy); built-in defaults when absent.
        #[arg(long, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ReportFormat::Table)]
        output: ReportFormat,
    },
    /// Show one tenant's whole stack as a tree: namespace, server, and each component with
    /// its provider, resources, location, processor, readiness and last error. Exit status
    /// 0 when the tenant is Ready, 1 when it is not, 2 when it cannot be read. Also a
    /// kubectl plugin: `kubectl dealertenant trace NAME`.
    Trace {
        /// The DealerTenant's name.
        name: String,
        /// `wide` adds each line's message; `json` prints the tree as JSON.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TraceFormat::Text)]
        output: TraceFormat,
    },
    /// Check DealerTenant manifests offline, with the rules the API server applies.
    Validate {
        /// Manifest files (YAML, several documents allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TraceFormat {
    Text,
    Wide,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Policy {
    Allow,
    Deny,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Markdown,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            out(&dealertenant_operator::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::AdmissionPolicy {
            config,
            third_country_processors,
        } => {
            use dealertenant_operator::config::ThirdCountryPolicy;
            let cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let policy = match third_country_processors {
                Some(Policy::Allow) => ThirdCountryPolicy::Allow,
                Some(Policy::Deny) => ThirdCountryPolicy::Deny,
                None => cfg.third_country_processors,
            };
            out(&dealertenant_operator::desired::admission::yaml(
                policy,
                &cfg.operator_namespace,
            ));
            ExitCode::SUCCESS
        }
        Command::DefaultConfig => match serde_saphyr::to_string(&OperatorConfig::default()) {
            Ok(yaml) => {
                out(&yaml);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.into()),
        },
        Command::ConfigReference => {
            out(&dealertenant_operator::config_reference::markdown());
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate_files(&files),
        Command::Trace { name, output } => {
            use dealertenant_operator::trace::{Output, command};
            command(
                &name,
                match output {
                    TraceFormat::Text => Output::Text,
                    TraceFormat::Wide => Output::Wide,
                    TraceFormat::Json => Output::Json,
                },
            )
        }
        Command::Processors {
            files,
            config,
            output,
        } => processors(&files, config.as_deref(), output),
        Command::Plan {
            file,
            config,
            output,
        } => plan_file(&file, config.as_deref(), output),
        Command::Run {
            config,
            log_json,
            install_crd,
            metrics_addr,
            leader_election,
            lease_name,
        } => {
            // Provider requests are counted from the subscriber too (the Google Cloud SDK's
            // spans): one set of counters for it, the providers and /metrics.
            let requests = dealertenant_operator::providers::requests::RequestMetrics::default();
            dealertenant_operator::logging::init(log_json, &requests);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(e.into()),
            };
            let leader = leader_election.then_some(lease_name);
            match runtime.block_on(run(config, install_crd, metrics_addr, leader, requests)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

/// Prints to stdout; a closed pipe (`| head`) ends the program quietly instead of panicking.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
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

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<OperatorConfig> {
    Ok(match path {
        Some(p) => OperatorConfig::load(p)?,
        None => OperatorConfig::default(),
    })
}

fn plan_file(file: &std::path::Path, config: Option<&std::path::Path>, output: Format) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let tenants = match read_tenants(file) {
        Ok(t) => t,
        Err(lines) => {
            for l in lines {
                out(&format!("{l}\n"));
            }
            return ExitCode::FAILURE;
        }
    };
    let plans: Vec<_> = tenants
        .iter()
        .map(|t| dealertenant_operator::plan::plan(t, &cfg))
        .collect();
    match output {
        Format::Text => plans
            .iter()
            .for_each(|p| out(&dealertenant_operator::plan::to_text(p))),
        Format::Json => {
            let json = if plans.len() == 1 {
                serde_json::to_string_pretty(&plans[0])
            } else {
                serde_json::to_string_pretty(&plans)
            };
            out(&format!("{}\n", json.expect("a plan serializes")));
        }
    }
    ExitCode::SUCCESS
}

/// Reads and validates a manifest file; on any problem, the lines `validate` would print.
fn read_tenants(file: &std::path::Path) -> Result<Vec<DealerTenant>, Vec<String>> {
    let shown = file.display().to_string();
    let text =
        std::fs::read_to_string(file).map_err(|e| vec![format!("{shown}: cannot read: {e}")])?;
    let docs = validate::validate_text(&text).map_err(|p| vec![format!("{shown}: {p}")])?;
    let mut lines = Vec::new();
    for (label, problems) in &docs {
        let prefix = if label.is_empty() {
            shown.clone()
        } else {
            format!("{shown} ({label})")
        };
        lines.extend(problems.iter().map(|p| format!("{prefix}: {p}")));
    }
    if !lines.is_empty() {
        return Err(lines);
    }
    let values: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| vec![format!("{shown}: {e}")])?;
    values
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|v| serde_json::from_value(v).map_err(|e| vec![format!("{shown}: {e}")]))
        .collect()
}

fn processors(
    files: &[PathBuf],
    config: Option<&std::path::Path>,
    output: ReportFormat,
) -> ExitCode {
    use dealertenant_operator::processors::report::{self, TenantReport};
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let reports: Vec<TenantReport> = if files.is_empty() {
        let live = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(live_tenants()));
        match live {
            Ok(tenants) => tenants
                .iter()
                .map(|t| tenant_report(t, &cfg, true))
                .collect(),
            Err(e) => return fail(e),
        }
    } else {
        let mut tenants = Vec::new();
        let mut bad = false;
        for f in files {
            match read_tenants(f) {
                Ok(ts) => tenants.extend(ts),
                Err(lines) => {
                    bad = true;
                    lines.iter().for_each(|l| out(&format!("{l}\n")));
                }
            }
        }
        if bad {
            return ExitCode::FAILURE;
        }
        tenants
            .iter()
            .map(|t| tenant_report(t, &cfg, false))
            .collect()
    };
    out(&match output {
        ReportFormat::Table => report::table(&reports),
        ReportFormat::Markdown => report::markdown(&reports),
        ReportFormat::Json => format!("{}\n", report::json(&reports)),
    });
    ExitCode::SUCCESS
}

/// A tenant's processors: from its status when it has been reconciled (what actually holds
/// data), otherwise from its spec and the configuration.
fn tenant_report(
    t: &DealerTenant,
    cfg: &OperatorConfig,
    prefer_status: bool,
) -> dealertenant_operator::processors::report::TenantReport {
    use dealertenant_operator::processors;
    use dealertenant_operator::providers::{self, Component};
    let from_status = t
        .status
        .as_ref()
        .map(|s| s.processors.clone())
        .unwrap_or_default();
    let list = if prefer_status && !from_status.is_empty() {
        from_status
    } else {
        let mut used = vec![("hosting".to_string(), cfg.cluster.processor.clone())];
        for c in Component::ORDER {
            if dealertenant_operator::plan::skip_reason(c, t, cfg).is_none() {
                used.push((
                    c.key().to_string(),
                    providers::processor_of(c, cfg).to_string(),
                ));
            }
        }
        processors::for_tenant(&used, &processors::catalog(&cfg.processors))
    };
    dealertenant_operator::processors::report::TenantReport {
        tenant: t.tenant_name().to_string(),
        processors: list,
    }
}

async fn live_tenants() -> anyhow::Result<Vec<DealerTenant>> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes cluster is reachable: give manifest files, or set KUBECONFIG")?;
    let api: kube::Api<DealerTenant> = kube::Api::all(client);
    let list = api
        .list(&Default::default())
        .await
        .context("cannot list DealerTenants in the cluster")?;
    Ok(list.items)
}

fn validate_files(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        let shown = file.display();
        let text = match std::fs::read(file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    out(&format!("{shown}: the file is not UTF-8 text\n"));
                    ok = false;
                    continue;
                }
            },
            Err(e) => {
                out(&format!("{shown}: cannot read: {e}\n"));
                ok = false;
                continue;
            }
        };
        match validate::validate_text(&text) {
            Err(problem) => {
                out(&format!("{shown}: {problem}\n"));
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
                        out(&format!("{prefix}: {p}\n"));
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

/// `lease_name`: leader election on that Lease; `None`: this process reconciles alone.
async fn run(
    config: Option<PathBuf>,
    install_crd: bool,
    metrics_addr: std::net::SocketAddr,
    lease_name: Option<String>,
    requests: dealertenant_operator::providers::requests::RequestMetrics,
) -> anyhow::Result<()> {
    use dealertenant_operator::controller::leader;
    let config = load_config(config.as_deref())?;
    let identity = leader::identity();
    let mut kube_config = kube::Config::infer().await.context(
        "no Kubernetes cluster is reachable: set KUBECONFIG (or ~/.kube/config) to a cluster, \
         or run inside a Pod with a ServiceAccount",
    )?;
    // The API server's audit log tells the replicas apart by user agent.
    let agent = format!(
        "dealertenant-operator/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    );
    kube_config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent)
            .context("the Pod name is not valid in an HTTP User-Agent header")?,
    ));
    let client = kube::Client::try_from(kube_config)
        .context("cannot build a Kubernetes client from the kube configuration")?;
    // Check the connection now rather than on the first watch.
    client
        .apiserver_version()
        .await
        .context("the Kubernetes API server named by the current kube context does not answer")?;
    if install_crd {
        dealertenant_operator::controller::install_crd(&client).await?;
        dealertenant_operator::controller::ensure_operator_namespace(
            &client,
            &config.operator_namespace,
        )
        .await?;
    }
    let providers = dealertenant_operator::providers::from_config(&config, &requests).await?;
    let election = lease_name.map(|lease_name| leader::Election {
        lease_name,
        namespace: config.operator_namespace.clone(),
        identity,
    });
    dealertenant_operator::controller::run(client, config, providers, metrics_addr, election).await
}
