//! `omnigate`: the gateway binary.

mod api;
mod config;
mod connectors;
mod roles;
mod router;
mod serve;
mod tools;
mod webhooks;

use clap::{Parser, Subcommand};
use config::Config;
use std::{future::Future, path::PathBuf, process::ExitCode, time::Duration};

// jemalloc, unprefixed, replaces malloc for the whole process, librdkafka's C code
// included: librdkafka's threads free what tokio's threads allocated (and the other way
// round), which glibc's malloc pays for in arena locks and consolidation, and
// jemalloc's per-thread caches do not. A Rust-only allocator would leave the C side on
// glibc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Omnigate: every customer message, one normalized event on Kafka.
#[derive(Debug, Parser)]
#[command(name = "omnigate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gateway.
    Serve {
        /// The config file (layered over the built-in defaults and under OMNIGATE_* env vars).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Roles to run (`api`, `router`, `webhooks`, or a connector such as
        /// `whatsapp`); repeat for several. Defaults to `roles` from the config.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Lists the broker's topics.
    Topics {
        /// The config file (for `[kafka]`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Prints every record of a topic (all partitions, from the start to the end
    /// offsets taken at start) as JSON lines.
    Tail {
        /// The config file (for `[kafka]`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Keep printing new records as they arrive, until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        /// Skip the history: print only records that arrive from now on (implies
        /// `--follow`).
        #[arg(long)]
        from_end: bool,
        /// The topic, without the prefix (`inbound.v1`) or in full.
        topic: String,
    },
    /// Routing tools.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// A local webhook receiver for trying outbound webhooks: prints each delivery and
    /// whether its Standard Webhooks signature verifies, and answers 204.
    Receive {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// The endpoint's `whsec_…` secret, to verify signatures.
        #[arg(long)]
        secret: Option<String>,
    },
    /// Loads and validates a config file, then exits: 0 when valid, 1 with the key at fault.
    CheckConfig {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// Prints which rule routes an event (canonical JSON, as on Kafka) and why the
    /// rules before it did not match.
    Explain {
        /// The config file (for `router.rules_file`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The event, as JSON.
        event: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(Some(&config)) {
            Ok(loaded) => {
                let channels: Vec<String> = loaded
                    .channels()
                    .into_iter()
                    .map(|(kind, channel)| format!("{kind}/{}", channel.id))
                    .collect();
                println!(
                    "{}: valid (roles {:?}, kafka {}, channels [{}])",
                    config.display(),
                    loaded.roles,
                    loaded.kafka.brokers,
                    channels.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Route {
            command: RouteCommand::Explain { config, event },
        } => run_tool(
            config,
            |config| async move { tools::explain(&config, &event) },
        ),
        Command::Topics { config } => {
            run_tool(config, |config| async move { tools::topics(&config).await })
        }
        Command::Receive { listen, secret } => {
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(tools::receive(listen, secret)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tail {
            config,
            follow,
            from_end,
            topic,
        } => run_tool(config, |config| async move {
            tools::tail(&config, &topic, follow, from_end)
        }),
        Command::Serve { config, roles } => {
            let loaded = match Config::load(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(err) = roles.iter().find_map(|r| loaded.check_role(r).err()) {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("error: cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(serve::serve(loaded, roles));
            // Threads still blocked on a broker that is gone must not hold up the exit:
            // what they held is not acknowledged and is read again after a restart.
            runtime.shutdown_timeout(Duration::from_millis(200));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads config and runs a short-lived async tool, reporting errors the same way.
fn run_tool<F, Fut>(config: Option<PathBuf>, tool: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let result = Config::load(config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(tool(config))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
