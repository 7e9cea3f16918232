//! The `switchyard` command line: serve, check, route, rollout, cohort, probe, demo.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::backend::BackendId;
use switchyard::config::Config;
use switchyard::routing::service::Service;
use switchyard::{demo, proxy, routing, server, state};

// jemalloc: it hands freed memory back to the system after a burst of connections
// (glibc's allocator kept ~8 MiB more after the load benchmarks) and spends less time
// per request in malloc and free.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Percentage-rollout reverse proxy for moving from one Supabase project to another.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "config/switchyard.toml")]
        config: PathBuf,
        /// Worker threads (default: one per core). 1 for a single-core deployment.
        #[arg(long, env = "SWITCHYARD_WORKERS")]
        workers: Option<usize>,
    },
    /// Validate a config (file plus environment) without serving.
    Check {
        #[arg(long, default_value = "config/switchyard.toml")]
        config: PathBuf,
    },
    /// Print, as one JSON line, where a user id is routed under a config.
    Route {
        #[arg(long, default_value = "config/switchyard.toml")]
        config: PathBuf,
        /// Service the request is for: rest, functions, graphql, auth, storage, realtime.
        #[arg(long, default_value = "rest")]
        service: String,
        user_id: String,
    },
    /// GET a URL and exit 0 on a 2xx answer (container health checks, no curl needed).
    Probe {
        #[arg(default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Show or change the rollout through a replica's admin API (the fleet's, in
    /// fleet mode). Writes need SWITCHYARD_ADMIN_TOKEN.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
        /// The admin listener of any replica.
        #[arg(long, global = true, env = "SWITCHYARD_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// Print the API's JSON.
        #[arg(long, global = true)]
        json: bool,
        /// Change this replica alone (when the fleet's store is unreachable).
        #[arg(long, global = true)]
        local: bool,
    },
    /// Which users a change of the percentage moves: as SQL, or counted in a database.
    Cohort {
        #[command(subcommand)]
        action: CohortAction,
    },
    /// Run the proxy in front of two embedded upstreams (no Supabase needed).
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        #[arg(long, default_value_t = 37, value_parser = clap::value_parser!(u8).range(0..=100))]
        percentage: u8,
        /// Serve HTTPS too, with a throwaway self-signed certificate.
        #[arg(long)]
        tls: bool,
        #[arg(long, default_value = "127.0.0.1:8443")]
        tls_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum RolloutAction {
    /// The rollout in force, the guard, the schedule and the fleet's replicas.
    Status,
    /// Set the percentage of users on v2 (pauses a schedule).
    Set {
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        percentage: u8,
    },
    /// Pause the schedule.
    Pause,
    /// Resume the schedule (its current step is held for a full period).
    Resume,
    /// Clear a tripped canary guard (the percentage stays).
    ClearGuard,
}

#[derive(clap::Args)]
struct Step {
    /// The percentage before the change.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    from: u8,
    /// The percentage after it.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    to: u8,
    /// The column holding the user id.
    #[arg(long, default_value = "user_id")]
    column: String,
    /// The config (its rollout.hash_seed, schema map and database URLs).
    #[arg(long, default_value = "config/switchyard.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum CohortAction {
    /// Print the PostgreSQL predicate selecting the rows of the users the step moves
    /// (for psql, or pg_dump --where).
    Sql {
        #[command(flatten)]
        step: Step,
        /// The band and the predicate as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Count the rows of each mapped table the step would move, in the database of the
    /// side its users leave (backends.<side>.database_url, or --database-url).
    Count {
        #[command(flatten)]
        step: Step,
        #[arg(long, env = "SWITCHYARD_COHORT_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("switchyard: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    // One crypto provider for every TLS use in the process, chosen explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    runtime_with(None)
}

fn runtime_with(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = workers.filter(|n| *n > 1) {
        b.worker_threads(n);
    }
    b.enable_all().build().expect("tokio runtime")
}

fn run(command: Command) -> Result<(), ExitCode> {
    match command {
        Command::Serve { config, workers } => {
            let cfg = load(&config)?;
            runtime_with(workers).block_on(server::run(cfg, Some(config))).map_err(|e| {
                eprintln!("switchyard: {e}");
                ExitCode::FAILURE
            })
        }
        Command::Check { config } => {
            let cfg = load(&config)?;
            if let Some(h) = cfg.handoff.as_ref().filter(|h| h.sync == switchyard::config::handoff::Sync::Postgres) {
                match runtime().block_on(switchyard::handoff::sync::coverage(&cfg, h)) {
                    Ok((covered, not)) => {
                        println!("handoff: moves the rows of {} with their users", list(&covered));
                        println!("handoff: does NOT move {} (no user column or parent; shared tables)", list(&not));
                    }
                    Err(why) => {
                        eprintln!(
                            "switchyard: backends.*.database_url: the handoff's sync cannot read the databases: {why}"
                        );
                        return Err(ExitCode::from(2));
                    }
                }
            }
            if let Some(cluster) = &cfg.cluster {
                match runtime().block_on(switchyard::fleet::check(cluster)) {
                    Ok(line) => println!("{line}"),
                    Err(why) => {
                        eprintln!("switchyard: cluster.database_url: the fleet's store cannot be used: {why}");
                        return Err(ExitCode::from(2));
                    }
                }
            }
            for line in runtime().block_on(switchyard::identity::fetch::report(&cfg)) {
                println!("{line}");
            }
            println!(
                "{}: ok (rollout {}% from {:?}, v1 {}, v2 {})",
                config.display(),
                cfg.rollout.percentage,
                cfg.rollout.percentage_source,
                cfg.backends.v1.url,
                cfg.backends.v2.url
            );
            Ok(())
        }
        Command::Route { config, service, user_id } => {
            let cfg = load(&config)?;
            let service = Service::ALL.into_iter().find(|s| s.as_str() == service).ok_or_else(|| {
                eprintln!("switchyard: unknown service {service:?}");
                ExitCode::from(2)
            })?;
            let percentile = routing::percentile::percentile(&cfg.rollout.hash_seed, &user_id);
            let snap = state::Snapshot::new(cfg);
            let d = proxy::route_user(&snap, service, &user_id);
            let line = serde_json::json!({
                "user_id": user_id,
                "percentile": percentile,
                "backend": d.backend,
                "reason": d.reason,
                "service": service,
                "rollout_percentage": snap.config.rollout.percentage,
            });
            println!("{line}");
            Ok(())
        }
        Command::Probe { url } => runtime().block_on(probe(&url)),
        Command::Cohort { action } => cohort(action),
        Command::Rollout { action, admin, json, local } => {
            use switchyard::rollout_cli::{self, Action};
            let action = match action {
                RolloutAction::Status => Action::Status,
                RolloutAction::Set { percentage } => Action::Set(percentage),
                RolloutAction::Pause => Action::Pause,
                RolloutAction::Resume => Action::Resume,
                RolloutAction::ClearGuard => Action::ClearGuard,
            };
            let token = std::env::var("SWITCHYARD_ADMIN_TOKEN").ok();
            match runtime().block_on(rollout_cli::run(&admin, token.as_deref(), action, local, json)) {
                Ok(text) => {
                    println!("{text}");
                    Ok(())
                }
                Err(why) => {
                    eprintln!("switchyard rollout: {why}");
                    Err(ExitCode::FAILURE)
                }
            }
        }
        Command::Demo { listen, admin_listen, percentage, tls, tls_listen } => runtime().block_on(async move {
            let fail = |e: std::io::Error| {
                eprintln!("switchyard demo: {e}");
                ExitCode::FAILURE
            };
            // Kept until the demo stops: the certificate lives only as long.
            let dir = tempfile::tempdir().map_err(fail)?;
            let tls = match tls {
                true => {
                    let (cert, key) = demo::self_signed(dir.path()).map_err(fail)?;
                    Some(demo::DemoTls { listen: tls_listen, cert, key })
                }
                false => None,
            };
            let v1 = demo::spawn_upstream(BackendId::V1).await.map_err(fail)?;
            let v2 = demo::spawn_upstream(BackendId::V2).await.map_err(fail)?;
            let cfg = demo::config(listen, admin_listen, percentage, v1, v2, tls.as_ref());
            demo::print_walkthrough(&cfg, listen, Some(admin_listen), tls.as_ref());
            server::run(cfg, None).await.map_err(fail)
        }),
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "no table".into() } else { names.join(", ") }
}

fn cohort(action: CohortAction) -> Result<(), ExitCode> {
    use switchyard::routing::band::Band;
    match action {
        CohortAction::Sql { step, json } => {
            // The seed is the config's, when there is a config.
            let seed = match step.config.exists() {
                true => load(&step.config)?.rollout.hash_seed,
                false => Vec::new(),
            };
            println!("{}", switchyard::cohort::sql(Band::between(step.from, step.to), &step.column, &seed, json));
            Ok(())
        }
        CohortAction::Count { step, database_url } => {
            let cfg = load(&step.config)?;
            let Some(band) = Band::between(step.from, step.to) else {
                println!("{}% to {}% moves nobody", step.from, step.to);
                return Ok(());
            };
            let side = band.from;
            let key = format!("backends.{side}.database_url");
            let url = match database_url {
                Some(u) => switchyard::config::secret::Secret::new(u),
                None => cfg.backends.get(side).database_url.clone().ok_or_else(|| {
                    eprintln!(
                        "switchyard cohort: set {key} (or --database-url): the {side} database holds the moving rows"
                    );
                    ExitCode::from(2)
                })?,
            };
            let counted = runtime().block_on(switchyard::cohort::count(&cfg, &url, side, band.clone(), &step.column));
            let rows = counted.map_err(|why| {
                eprintln!("switchyard cohort: {key}: {why}");
                ExitCode::FAILURE
            })?;
            println!(
                "{}% -> {}% moves percentiles {}..{} from {side} to {}:",
                step.from,
                step.to,
                band.low,
                band.high - 1,
                band.to
            );
            let mut total = 0;
            for (t, n) in rows {
                match n {
                    Ok(n) => {
                        total += n;
                        println!("  {:<40} {n:>10}", format!("{}.{}", t.schema, t.table));
                    }
                    Err(why) => println!("  {:<40} {why}", format!("{}.{}", t.schema, t.table)),
                }
            }
            println!("  {:<40} {total:>10}", "total");
            Ok(())
        }
    }
}

async fn probe(url: &str) -> Result<(), ExitCode> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    let uri: http::Uri = url.parse().map_err(|e| {
        eprintln!("switchyard probe: bad URL {url:?}: {e}");
        ExitCode::from(2)
    })?;
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    match tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => {
            eprintln!("switchyard probe: {url} answered {}", resp.status());
            Err(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            eprintln!("switchyard probe: {url}: {e}");
            Err(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("switchyard probe: {url}: no answer within 3 s");
            Err(ExitCode::FAILURE)
        }
    }
}
