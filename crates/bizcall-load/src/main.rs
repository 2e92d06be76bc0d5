//! `bizcall-load`: the load generator and the baselines it is compared with.
//!
//! - `run`: registers stores and tablet tokens, opens N tablets (STOMP over
//!   WebSocket) on one set of instances, posts CDRs at a set rate to another,
//!   and records webhook-to-popup latency per delivery; it also reads the
//!   tablet instance's resident memory and CPU time from `/proc`.
//! - `amqp`: the floor, a bare publish-confirm → consume round trip on the
//!   same broker with the same message size.
//! - `webstomp`: RabbitMQ's Web-STOMP plugin with tablets subscribed straight
//!   to the broker.
//! - `intake`: CDR intake over HTTP against the same `INSERT … ON CONFLICT`
//!   driven directly, at the same concurrency.
//!
//! Every command prints a table, and with `--out DIR` writes `<name>.json`.

mod args;
mod floor;
mod intake;
mod pacing;
mod plot;
mod procfs;
mod publish;
mod report;
mod run;
mod scrape;
mod sweep;
mod tablets;
mod webstomp;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

pub(crate) use args::*;
pub(crate) use pacing::*;
pub(crate) use procfs::*;
pub(crate) use publish::*;
pub(crate) use report::{histogram_text, progress, write_json};
pub(crate) use scrape::Scraped;
pub(crate) use tablets::*;

#[derive(Parser)]
#[command(
    name = "bizcall-load",
    about = "Load generator and baselines for bizcall"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tablets on some instances, CDRs to others: webhook→popup latency.
    Run(RunArgs),
    /// The floor: publish-confirm → consume on the same broker.
    Amqp(AmqpArgs),
    /// RabbitMQ Web-STOMP with tablets subscribed straight to the broker.
    Webstomp(WebstompArgs),
    /// CDR intake over HTTP against the same upsert driven directly.
    Intake(IntakeArgs),
    /// Draws every series in DIR into latency.svg and writes results.md.
    Plot { dir: PathBuf },
    /// Tables and charts of the sweeps in DIR (rate-*, tablets-*,
    /// scale-*.json): sweeps.md and sweep-*.svg.
    SweepPlot { dir: PathBuf },
    /// (Internal) holds tablets for `run --workers`: logins on stdin,
    /// deliveries on stdout.
    #[command(hide = true)]
    Worker,
    /// Deletes exchanges a run declared (the service's are durable).
    DropExchanges {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(cap) = bizcall::server::raise_file_limit() {
        eprintln!("open-file limit: {cap}");
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        match cli.command {
            Cmd::Run(a) => run::run(a).await,
            Cmd::Amqp(a) => floor::amqp(a).await,
            Cmd::Webstomp(a) => webstomp::webstomp(a).await,
            Cmd::Intake(a) => intake::intake(a).await,
            Cmd::Plot { dir } => plot::plot(&dir),
            Cmd::SweepPlot { dir } => sweep::plot(&dir),
            Cmd::Worker => tablets::worker().await,
            Cmd::DropExchanges { amqp, names } => drop_exchanges(&amqp, &names).await,
        }
    })
}

async fn drop_exchanges(amqp: &str, names: &[String]) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default())
        .await
        .context("broker")?;
    let channel = conn.create_channel().await?;
    for name in names {
        channel
            .exchange_delete(name.as_str().into(), Default::default())
            .await
            .with_context(|| format!("deleting exchange {name}"))?;
        eprintln!("deleted exchange {name}");
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
