//! `nkmc`: the command-line client of gatewayd.

mod admin;
mod audit;
mod daemons;
mod files;
mod mounts;
mod run;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentfs::client::GatewayClient;
use clap::{Parser, Subcommand};
use gatewayd::config::{Config, Paths};

/// nkmc: use any HTTP API through plain files, without ever seeing its key.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start gatewayd (if it is not running) and a mount; prints the mount point.
    Up {
        /// Where to mount (default: $NKMC_MOUNT, or /mnt/nkmc as root, ~/nkmc otherwise).
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Unmount every mount started by nkmc and stop gatewayd.
    Down,
    /// Control gatewayd.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Mount a view of the gateway at DIR; returns once the mount answers.
    Mount {
        /// The mount point (created if missing).
        dir: PathBuf,
        /// Act as this agent token (`-` reads it from stdin); default: NKMC_TOKEN or the saved token.
        #[arg(long)]
        token: Option<String>,
    },
    /// Unmount a mount started by nkmc.
    Umount {
        /// The mount point.
        dir: PathBuf,
    },
    /// Register a service from an OpenAPI (3.0, 3.1) or OpenRPC document, a skill.md
    /// manifest, or a document discovered from a URL.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["spec", "skill", "url"])))]
    Register {
        /// The document (OpenAPI or OpenRPC, JSON or YAML).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// A skill.md manifest (needs --base-url, and --domain unless the URL's host will do).
        #[arg(long)]
        skill: Option<PathBuf>,
        /// Discover the document from this URL (Link headers, /openapi.json and the like).
        #[arg(long)]
        url: Option<String>,
        /// The folder name (default: the host of the document's first server).
        #[arg(long)]
        domain: Option<String>,
        /// Where requests go (default: the document's first server URL).
        #[arg(long)]
        base_url: Option<String>,
    },
    /// Registered services.
    Services {
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// Credentials in the vault.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// List a directory of the tree (as `ls` on the mount).
    Ls {
        /// A path such as `/` or `/api.openai.com/models.d`.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Print a file of the tree (as `cat` on the mount).
    Cat {
        /// A path such as `/api.openai.com/models`.
        path: String,
    },
    /// Write JSON to a file (as `echo '{...}' > FILE` on the mount) and print the response.
    Write {
        /// A path such as `/api.openai.com/responses`.
        path: String,
        /// The JSON to send; `-` or absent reads it from stdin.
        data: Option<String>,
    },
    /// Remove a file (as `rm` on the mount): its DELETE.
    Rm {
        /// A path such as `/api.openai.com/models.d/ft-1`.
        path: String,
    },
    /// The audit log: every operation, hash-chained.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Mint a token for an agent (asks gatewayd) and save it where nkmc and mountd find it:
    /// $NKMC_DATA_DIR/agent.token, mode 0600. $NKMC_TOKEN, when set, takes precedence.
    Auth(token::AuthArgs),
    /// Agent tokens: mint, attenuate (offline), inspect, revoke.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Run a CLI (gh, aws, openai...) inside gatewayd with its key injected; its output
    /// (masked) streams back and nkmc exits with its code. `--list` shows the tools.
    Run(run::RunArgs),
}

#[derive(Debug, Subcommand)]
enum GatewayCommand {
    /// Start gatewayd (in the foreground unless --daemon).
    Start {
        /// Run in the background and return once it answers.
        #[arg(long)]
        daemon: bool,
    },
    /// Stop gatewayd.
    Stop,
    /// Say what runs, where, with which data dir.
    Status,
}

#[derive(Debug, Subcommand)]
enum ServicesCommand {
    /// List registered services.
    List,
    /// Remove a service.
    Remove {
        /// Its domain.
        domain: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Store the key of DOMAIN (encrypted), replacing any previous one.
    #[command(group(clap::ArgGroup::new("how").required(true).args(["token", "header", "query", "basic"])))]
    Set {
        /// The service's domain.
        domain: String,
        /// The secret, or `-` to read it from stdin (keeps it out of shell history). Injected
        /// as the document's security schemes say (a bearer token when they say nothing).
        #[arg(long)]
        token: Option<String>,
        /// Send the key in this request header (with --value).
        #[arg(long, requires = "value")]
        header: Option<String>,
        /// Send the key in this query parameter (with --value).
        #[arg(long, requires = "value")]
        query: Option<String>,
        /// The key for --header or --query, or `-` for stdin.
        #[arg(long)]
        value: Option<String>,
        /// HTTP basic credentials `USER:PASSWORD`, or `-` for stdin.
        #[arg(long)]
        basic: Option<String>,
    },
    /// List stored keys (domains, never secrets).
    List,
    /// Remove the keys of DOMAIN.
    Remove {
        /// The service's domain.
        domain: String,
    },
}

/// What every command needs: where things are and a client for the socket.
pub struct Ctx {
    /// Resolved paths.
    pub paths: Paths,
    /// Tunables (for timeouts).
    pub config: Config,
}

impl Ctx {
    /// A client whose timeout outlasts one upstream call, acting as the current agent token
    /// (`NKMC_TOKEN`, else the one `nkmc auth` saved) or, without one, as the owner.
    pub fn client(&self) -> GatewayClient {
        let timeout = self.config.upstream.timeout() + Duration::from_secs(5);
        GatewayClient::new(&self.paths.socket, timeout).with_token(token::current_token(self))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nkmc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nkmc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let paths = Paths::from_env()?;
    let config = Config::load(&paths.config_file)?;
    let ctx = Ctx { paths, config };
    match cli.command {
        Command::Up { mount } => daemons::up(&ctx, mount).await,
        Command::Down => daemons::down(&ctx).await,
        Command::Gateway { command: GatewayCommand::Start { daemon } } => daemons::gateway_start(&ctx, daemon).await,
        Command::Gateway { command: GatewayCommand::Stop } => daemons::gateway_stop(&ctx).await,
        Command::Gateway { command: GatewayCommand::Status } => daemons::status(&ctx).await,
        Command::Mount { dir, token } => daemons::mount(&ctx, &dir, token).await,
        Command::Umount { dir } => daemons::umount(&ctx, &dir).await,
        Command::Register { spec, skill, url, domain, base_url } => {
            let source = match (spec, skill, url) {
                (Some(p), _, _) => admin::Source::Spec(p),
                (_, Some(p), _) => admin::Source::Skill(p),
                (_, _, Some(u)) => admin::Source::Url(u),
                (None, None, None) => anyhow::bail!("give --spec, --skill or --url"),
            };
            admin::register(&ctx, source, domain, base_url).await
        }
        Command::Services { command: ServicesCommand::List } => admin::services_list(&ctx).await,
        Command::Services { command: ServicesCommand::Remove { domain } } => {
            admin::services_remove(&ctx, &domain).await
        }
        Command::Keys { command: KeysCommand::Set { domain, token, header, query, value, basic } } => {
            use agentfs::spec::{KeyLocation, SecurityScheme};
            let (secret, placement) = match (token, header, query, basic) {
                (Some(t), None, None, None) => (t, None),
                (None, Some(name), None, None) => {
                    (value.unwrap_or_default(), Some(SecurityScheme::ApiKey { location: KeyLocation::Header, name }))
                }
                (None, None, Some(name), None) => {
                    (value.unwrap_or_default(), Some(SecurityScheme::ApiKey { location: KeyLocation::Query, name }))
                }
                (None, None, None, Some(b)) => (b, Some(SecurityScheme::Basic)),
                _ => anyhow::bail!("give one of --token, --header/--value, --query/--value, --basic"),
            };
            admin::keys_set(&ctx, &domain, &secret, placement).await
        }
        Command::Keys { command: KeysCommand::List } => admin::keys_list(&ctx).await,
        Command::Keys { command: KeysCommand::Remove { domain } } => admin::keys_remove(&ctx, &domain).await,
        Command::Ls { path } => files::ls(&ctx, &path).await,
        Command::Cat { path } => files::cat(&ctx, &path).await,
        Command::Write { path, data } => files::write(&ctx, &path, data).await,
        Command::Rm { path } => files::rm(&ctx, &path).await,
        Command::Audit { command } => audit::run(&ctx, command).await,
        Command::Auth(args) => token::auth(&ctx, args).await,
        Command::Token { command } => token::run(&ctx, command).await,
        Command::Run(args) => run::run(&ctx, args).await,
    }
}
