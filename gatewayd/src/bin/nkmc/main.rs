//! `nkmc`: the command-line client of gatewayd.

mod admin;
mod audit;
mod daemons;
mod federation;
mod files;
mod mounts;
mod payments;
mod pipe;
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
    /// The vault's master key.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
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
    /// Federation peers: gateways this one lends to and borrows from.
    Peers {
        #[command(subcommand)]
        command: federation::PeersCommand,
    },
    /// Lending rules: which domains peers may borrow, for what, at what price and rate.
    Rules {
        #[command(subcommand)]
        command: federation::RulesCommand,
    },
    /// The wallet that pays peers for paid lending (x402; the key stays in the vault).
    Wallet {
        #[command(subcommand)]
        command: payments::WalletCommand,
    },
    /// The daily budget for paying peers.
    Budget {
        #[command(subcommand)]
        command: payments::BudgetCommand,
    },
    /// Every charge, paid to peers (`spent`) and paid by them (`earned`), oldest first.
    Ledger {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Search files under a path (as `grep -r` on the mount): prints `PATH:LINE` per match.
    /// Exits 0 when something matched, 1 when nothing did, 2 on an error.
    Grep(files::GrepArgs),
    /// Run a small pipeline of file commands inside nkmc, moving bodies, not envelopes:
    /// `nkmc pipe "cat /a/items | write /b/items"`. Stages: `cat PATH` (first),
    /// `grep [-i] [-v] [-F] PATTERN` (keeps matching lines), `write PATH` (sends what it gets
    /// and passes the response on). The last stage's output is printed.
    Pipe {
        /// The pipeline, one argument (quote it).
        pipeline: String,
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
        /// Publish the gateway's TCP API through a tunnel (cloudflared must be installed);
        /// the public URL shows in `nkmc gateway status` and goes to the coordinator.
        #[arg(long)]
        tunnel: bool,
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
    #[command(group(clap::ArgGroup::new("how").required(true).args(["token", "header", "query", "basic", "oauth2"])))]
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
        /// OAuth2 client credentials `CLIENT_ID:CLIENT_SECRET`, or `-` for stdin: gatewayd
        /// fetches an access token from the token URL (the document's client-credentials flow,
        /// or --oauth2-token-url), caches it until it expires, and sends it as a bearer token.
        #[arg(long)]
        oauth2: Option<String>,
        /// The OAuth2 token URL, when the document declares none (on the service's origin, or
        /// an origin listed in config.toml `[vault] oauth2_token_origins`).
        #[arg(long, requires = "oauth2")]
        oauth2_token_url: Option<String>,
        /// Store it as the current agent's own key (BYOK: NKMC_TOKEN, else the token `nkmc
        /// auth` saved), used for that agent's requests before the pool key and seen by no
        /// other agent. Without it, the owner sets the pool key.
        #[arg(long)]
        byok: bool,
    },
    /// List stored keys (domains, never secrets).
    List {
        /// Only the current agent's own keys (as its token sees them).
        #[arg(long)]
        byok: bool,
    },
    /// Remove the keys of DOMAIN (the pool key and every agent's own).
    Remove {
        /// The service's domain.
        domain: String,
        /// Only the current agent's own key.
        #[arg(long)]
        byok: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VaultCommand {
    /// Re-encrypt every stored key under a new master key, online (gatewayd keeps serving).
    /// A crash at any moment leaves every key readable. Not available when the master key
    /// comes from NKMC_ENCRYPTION_KEY (the error says what to do instead).
    Rotate,
    /// Decrypt every stored key (never printing one): says how many there are, or names the
    /// first that does not decrypt and exits 1.
    Check,
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

    /// A client that acts as the owner, whatever token is saved or in NKMC_TOKEN.
    pub fn owner_client(&self) -> GatewayClient {
        GatewayClient::new(&self.paths.socket, self.config.upstream.timeout() + Duration::from_secs(5))
    }

    /// The owner's client, or with `byok` the current agent's (an error without a token).
    pub fn keys_client(&self, byok: bool) -> anyhow::Result<GatewayClient> {
        if !byok {
            return Ok(self.owner_client());
        }
        let token = token::current_token(self).ok_or_else(|| {
            anyhow::anyhow!("--byok acts as an agent: set NKMC_TOKEN or run `nkmc auth --agent NAME` first")
        })?;
        Ok(self.owner_client().with_token(Some(token)))
    }
}

fn main() -> ExitCode {
    agentfs::panic::install_quiet_hook("nkmc");
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
        Command::Gateway { command: GatewayCommand::Start { daemon, tunnel } } => {
            daemons::gateway_start(&ctx, daemon, tunnel).await
        }
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
        Command::Keys {
            command: KeysCommand::Set { domain, token, header, query, value, basic, oauth2, oauth2_token_url, byok },
        } => {
            use agentfs::spec::{KeyLocation, SecurityScheme};
            let (secret, placement) = match (token, header, query, basic, oauth2) {
                (Some(t), None, None, None, None) => (t, None),
                (None, Some(name), None, None, None) => {
                    (value.unwrap_or_default(), Some(SecurityScheme::ApiKey { location: KeyLocation::Header, name }))
                }
                (None, None, Some(name), None, None) => {
                    (value.unwrap_or_default(), Some(SecurityScheme::ApiKey { location: KeyLocation::Query, name }))
                }
                (None, None, None, Some(b), None) => (b, Some(SecurityScheme::Basic)),
                (None, None, None, None, Some(c)) => {
                    let token_url = oauth2_token_url.unwrap_or_default();
                    (c, Some(SecurityScheme::OAuth2ClientCredentials { token_url }))
                }
                _ => anyhow::bail!("give one of --token, --header/--value, --query/--value, --basic, --oauth2"),
            };
            admin::keys_set(&ctx, &domain, &secret, placement, byok).await
        }
        Command::Keys { command: KeysCommand::List { byok } } => admin::keys_list(&ctx, byok).await,
        Command::Keys { command: KeysCommand::Remove { domain, byok } } => {
            admin::keys_remove(&ctx, &domain, byok).await
        }
        Command::Vault { command: VaultCommand::Rotate } => admin::vault_rotate(&ctx).await,
        Command::Vault { command: VaultCommand::Check } => admin::vault_check(&ctx).await,
        Command::Ls { path } => files::ls(&ctx, &path).await,
        Command::Cat { path } => files::cat(&ctx, &path).await,
        Command::Write { path, data } => files::write(&ctx, &path, data).await,
        Command::Rm { path } => files::rm(&ctx, &path).await,
        Command::Grep(args) => files::grep(&ctx, args).await,
        Command::Peers { command } => federation::peers(&ctx, command).await,
        Command::Rules { command } => federation::rules(&ctx, command).await,
        Command::Wallet { command } => payments::wallet(&ctx, command).await,
        Command::Budget { command } => payments::budget(&ctx, command).await,
        Command::Ledger { json } => payments::ledger(&ctx, json).await,
        Command::Pipe { pipeline } => pipe::run(&ctx, &pipeline).await,
        Command::Audit { command } => audit::run(&ctx, command).await,
        Command::Auth(args) => token::auth(&ctx, args).await,
        Command::Token { command } => token::run(&ctx, command).await,
        Command::Run(args) => run::run(&ctx, args).await,
    }
}
