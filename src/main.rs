//! The `bizcall` command line: parse, load the configuration, call into the
//! library. Everything meant for people goes to standard error; standard
//! output carries only what scripts capture (a new token, a call's id).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bizcall::call::CallStatus;
use bizcall::cdr::normalize_number;
use bizcall::config::{Config, LogFormat};
use bizcall::db::{from_millis, Db};

#[derive(Parser)]
#[command(
    name = "bizcall",
    version,
    about = "Phone calls to a store's 050 number, as popups on its tablets"
)]
struct Cli {
    /// Configuration file (default: bizcall.toml in the working directory, when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an instance.
    Serve,
    /// Apply database migrations (serve does too).
    Migrate,
    /// Register, list and remove stores.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Issue, list and revoke tablet tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Send a made-up call to a running server.
    #[command(subcommand)]
    Call(CallCommand),
    /// Inspect, replay or purge the RabbitMQ dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Register a store and the numbers that identify its calls.
    Add {
        slug: String,
        #[arg(long)]
        name: String,
        /// A 050 virtual number or the store's real number; repeat for several.
        #[arg(long = "number", required = true)]
        numbers: Vec<String>,
    },
    /// List stores and their numbers.
    List,
    /// Remove a store, its numbers and its tokens (its calls stay).
    Remove { slug: String },
    /// Let token-less tablets (compat.anonymous) follow this store's calls,
    /// read-only, or stop letting them; off for every store until turned on.
    Anonymous {
        slug: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Add stores from a CSV file, one `slug,name,number[,number…]` per
    /// line; all or nothing, and stores already there unchanged are skipped.
    Import { file: std::path::PathBuf },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a tablet token; prints it once, alone, on standard output.
    Issue {
        slug: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a store's tokens (ids and labels, never the tokens).
    List { slug: String },
    /// Revoke a token by id; its tablets are disconnected.
    Revoke { token_id: String },
}

#[derive(Subcommand)]
enum CallCommand {
    /// Post a provider-shaped CDR to a running server.
    Simulate {
        /// The number dialled (the store's 050 number).
        #[arg(long)]
        to: String,
        /// The caller's number.
        #[arg(long)]
        from: String,
        /// Server base URL (default: http://<server.listen>).
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value = "ringing")]
        status: CallStatus,
        /// Id of an earlier simulated call, to update it.
        #[arg(long)]
        seq: Option<String>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show each dead message: call id, store, reason and time.
    List,
    /// Publish every dead message to the exchange again, with a fresh TTL.
    Replay,
    /// Empty the dead-letter queue.
    Purge,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line saying what was wrong.
            let rendered = e.render().to_string();
            let line: Vec<&str> = rendered
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{} (see bizcall --help)", line.join(" "));
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            return ExitCode::FAILURE;
        }
    };
    init_logging(matches!(cli.command, Command::Serve), config.log.format);
    if matches!(cli.command, Command::Serve) {
        bizcall::log_budget::log_panics();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. A cause whose text its wrapper
/// already shows (thiserror's `database: {0}`) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
    }
    msg.replace('\n', " ")
}

/// Logs go to standard error, as text or one JSON object per line
/// (`log.format`); `RUST_LOG` picks the level.
fn init_logging(serving: bool, format: LogFormat) {
    let default = if serving { "info" } else { "warn" };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // PostgreSQL's notices ("relation … already exists, skipping" from
    // every instance's migration check) are not news at `info`, unless
    // RUST_LOG asks about sqlx itself.
    let asks_about_sqlx = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("sqlx"));
    if !asks_about_sqlx {
        if let Ok(quiet) = "sqlx::postgres::notice=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Some libraries log secrets at `trace` (whole WebSocket frames): those
    // events are dropped whatever `RUST_LOG` says.
    let secrets = tracing_subscriber::filter::filter_fn(bizcall::http::ws::loggable);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour codes only on a terminal, not in log files.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(secrets)
            .init(),
        // timestamp, level, target, message and the event's fields, all at
        // the top level of the object.
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish()
            .with(secrets)
            .init(),
    }
}

/// The database a command wrote to, without its password: said after
/// every write, so that one made against the wrong database is noticed.
fn database_of(config: &Config) -> String {
    bizcall::server::without_password(&config.database.url)
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let db = open(&config).await?;
            db.migrate().await?;
            eprintln!("migrations applied (in {})", database_of(&config));
            Ok(())
        }
        Command::Store(cmd) => store(config, cmd).await,
        Command::Token(cmd) => token(config, cmd).await,
        Command::Call(CallCommand::Simulate {
            to,
            from,
            server,
            status,
            seq,
        }) => {
            let base = server.unwrap_or_else(|| format!("http://{}", config.server.listen));
            let sim = bizcall::simulate::Simulation {
                url: format!("{}{}", base.trim_end_matches('/'), config.webhook.path),
                to,
                from,
                status,
                seq,
                key: (!config.webhook.key.is_empty()).then(|| config.webhook.key.clone()),
            };
            let answer = sim.send().await?;
            if answer.status != 200 {
                anyhow::bail!("server answered {}: {}", answer.status, answer.body.trim());
            }
            eprintln!(
                "call {} ({status}) sent to {}: {}",
                answer.seq,
                sim.url,
                answer.body.trim()
            );
            println!("{}", answer.seq);
            Ok(())
        }
        Command::Dlq(cmd) => dlq(config, cmd).await,
    }
}

async fn open(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect_sized(&config.database.url, config.database.pool_size).await?;
    db.migrate().await?;
    Ok(db)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Signals are caught from before the "listening" line: a SIGTERM sent
    // as soon as the instance says it is up stops it gracefully.
    let signals = Signals::catch();
    let server = bizcall::server::start(config).await?;
    let stop = server.app.shutdown.clone();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("stopping: finishing requests in flight");
        stop.cancel();
    });
    server.wait().await
}

/// SIGTERM and SIGINT, caught once registered (before they arrive).
enum Signals {
    Unix(tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    CtrlC,
}

impl Signals {
    fn catch() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals::Unix(term, int),
            _ => Signals::CtrlC,
        }
    }

    async fn wait(self) {
        match self {
            Signals::Unix(mut term, mut int) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            Signals::CtrlC => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

async fn store(config: Config, cmd: StoreCommand) -> anyhow::Result<()> {
    let db = open(&config).await?;
    match cmd {
        StoreCommand::Add {
            slug,
            name,
            numbers,
        } => {
            if !bizcall::slug::is_valid(&slug) {
                anyhow::bail!("store slug {slug:?}: expected {}", bizcall::slug::RULE);
            }
            if name.trim().is_empty() || name.chars().count() > 200 {
                anyhow::bail!("--name: expected 1 to 200 characters");
            }
            if let Some(why) = bizcall::text::refused_char(&name, false) {
                anyhow::bail!("--name: {why}");
            }
            let mut digits = Vec::new();
            for n in &numbers {
                let d = normalize_number(n).ok_or_else(|| {
                    anyhow::anyhow!("--number {n:?}: expected 1 to 20 digits ('-' allowed)")
                })?;
                if !digits.contains(&d) {
                    digits.push(d);
                }
            }
            db.store_add(&slug, name.trim(), &digits).await?;
            eprintln!(
                "store {slug} added with numbers {} (in {})",
                digits.join(", "),
                database_of(&config)
            );
        }
        StoreCommand::Anonymous { slug, state } => {
            let allowed = state == "on";
            if !db.store_set_anonymous(&slug, allowed).await? {
                anyhow::bail!("no store {slug:?} (see bizcall store list)");
            }
            eprintln!(
                "store {slug}: token-less tablets {} (in {})",
                if allowed {
                    "may follow its calls (read-only; needs compat.anonymous = true)"
                } else {
                    "may not follow its calls"
                },
                database_of(&config)
            );
        }
        StoreCommand::List => {
            let stores = db.store_list().await?;
            if stores.is_empty() {
                eprintln!(
                    "no stores yet: bizcall store add <slug> --name <name> --number <number>"
                );
            }
            for s in stores {
                println!("{}\t{}\t{}", s.slug, s.name, s.numbers.join(","));
            }
        }
        StoreCommand::Import { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            if bytes.len() > bizcall::store_import::MAX_FILE {
                anyhow::bail!("{}: larger than 8 MiB", file.display());
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", file.display()))?;
            let checked = match bizcall::store_import::parse(&text) {
                Ok(rows) => bizcall::store_import::import(&db, &rows).await?,
                Err(errors) => Err(errors),
            };
            match checked {
                Ok(done) => eprintln!(
                    "imported {} store(s), {} already there unchanged (in {})",
                    done.added,
                    done.unchanged,
                    database_of(&config)
                ),
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{}: {e}", file.display());
                    }
                    anyhow::bail!(
                        "{}: {} bad row(s); nothing imported",
                        file.display(),
                        errors.len()
                    );
                }
            }
        }
        StoreCommand::Remove { slug } => {
            if !db.store_remove(&slug).await? {
                anyhow::bail!("no store {slug}");
            }
            eprintln!(
                "store {slug} removed (its tokens are revoked; its calls stay) (in {})",
                database_of(&config)
            );
        }
    }
    Ok(())
}

async fn token(config: Config, cmd: TokenCommand) -> anyhow::Result<()> {
    let db = open(&config).await?;
    match cmd {
        TokenCommand::Issue { slug, label } => {
            if let Some(why) = bizcall::text::refused_char(&label, false) {
                anyhow::bail!("--label: {why}");
            }
            if label.chars().count() > 200 {
                anyhow::bail!("--label: at most 200 characters");
            }
            let (id, token) = match db.token_issue(&slug, &label).await {
                Err(bizcall::db::DbError::Refused(bizcall::db::Refusal::NoStore(_))) => {
                    anyhow::bail!(
                        "no store {slug} in {} (bizcall store list shows its stores; BIZCALL_DATABASE__URL or --config picks another database)",
                        database_of(&config)
                    )
                }
                other => other?,
            };
            eprintln!(
                "token {id} issued for store {slug} (in {}); it is shown only this once",
                database_of(&config)
            );
            println!("{token}");
        }
        TokenCommand::List { slug } => {
            for t in db.token_list(&slug).await? {
                let state = match t.revoked_at {
                    Some(ms) => format!("revoked {}", from_millis(ms).to_rfc3339()),
                    None => "active".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}",
                    t.id,
                    from_millis(t.created_at).to_rfc3339(),
                    state,
                    t.label
                );
            }
        }
        TokenCommand::Revoke { token_id } => {
            if !db.token_revoke(&token_id).await? {
                anyhow::bail!("no active token {token_id}");
            }
            eprintln!("token {token_id} revoked (in {})", database_of(&config));
        }
    }
    Ok(())
}

async fn dlq(config: Config, cmd: DlqCommand) -> anyhow::Result<()> {
    use bizcall::bus::amqp::dlq;
    let queue = config.amqp.dead_letter_queue.clone();
    match cmd {
        DlqCommand::List => {
            let dead = dlq::list(&config).await?;
            for d in &dead {
                let when = d.died_at.map(|t| t.to_rfc3339()).unwrap_or_default();
                println!("{}\t{}\t{}\t{}", d.call_id, d.store, d.reason, when);
            }
            eprintln!("{} dead message(s) in {queue}", dead.len());
        }
        DlqCommand::Replay => {
            let (replayed, skipped) = dlq::replay(&config).await?;
            eprintln!(
                "replayed {replayed} message(s) from {queue} to {}",
                config.amqp.exchange
            );
            if skipped > 0 {
                eprintln!("left {skipped} message(s) that are not call events in {queue}");
            }
        }
        DlqCommand::Purge => {
            let n = dlq::purge(&config).await?;
            eprintln!("purged {n} message(s) from {queue}");
        }
    }
    Ok(())
}
