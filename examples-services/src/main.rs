//! `mirror-examples`: run one of the example services (see README.md).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use mirror_examples::candidate::{Candidate, Profile};
use mirror_examples::http::{self, Handler};
use mirror_examples::legacy::Legacy;
use mirror_examples::payments::{Payments, PaymentsClient};
use mirror_examples::reflect::Reflect;
use mirror_examples::{echo, load, mail};

#[derive(Parser, Debug)]
#[command(version, about = "Example services for mirror's demo and tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The legacy API.
    Legacy {
        #[arg(long)]
        listen: SocketAddr,
        /// The payments service `POST /orders` charges (HTTP/1.1, `POST /charges`).
        #[arg(long)]
        payments: Option<SocketAddr>,
    },
    /// The rewrite of the legacy API.
    Candidate {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value_t = Profile::Parity)]
        profile: Profile,
        /// SMTP host for order confirmations (demo profile): HOST or HOST:PORT, port 25
        /// by default. Without it no email is attempted.
        #[arg(long)]
        mail_host: Option<String>,
        /// The payments service `POST /orders` charges (HTTP/1.1, `POST /charges`).
        #[arg(long)]
        payments: Option<SocketAddr>,
    },
    /// The payment dependency: `POST /charges` answers with a charge id derived from the
    /// order id and amount.
    Payments {
        #[arg(long)]
        listen: SocketAddr,
        /// Keep the number of charges received in this file.
        #[arg(long)]
        count_file: Option<PathBuf>,
    },
    /// Echoes each request back like httpbin (JSON, gzip, br, URL-encoded, HTML, base64
    /// by path prefix); for masking tests.
    Reflect {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// An SMTP sink: accepts mail, prints one line per message to stdout.
    MailSink {
        #[arg(long)]
        listen: SocketAddr,
        /// Keep the number of received messages in this file.
        #[arg(long)]
        count_file: Option<PathBuf>,
    },
    /// Echoes each request's X-Request-Id in every response kind (JSON, gzip, chunked,
    /// binary, HEAD, 204), pipelining included.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Keep-alive and pipelining clients of `echo` that check every echoed id; prints a
    /// summary and exits non-zero if any response carried another request's id.
    EchoLoad {
        #[arg(long)]
        target: SocketAddr,
        /// Clients sending one request at a time.
        #[arg(long, default_value_t = 4)]
        keepalive: usize,
        /// Clients writing batches of --batch requests at once.
        #[arg(long, default_value_t = 4)]
        pipelining: usize,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Reconnect after this many requests (0: never).
        #[arg(long, default_value_t = 0)]
        requests_per_connection: u64,
    },
    /// A bounded load generator over keep-alive connections; prints a summary and exits
    /// non-zero if any request got no response or was not sent in time.
    Load {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        requests: u64,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Requests per second over all connections (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Stop after this many seconds whatever is left.
        #[arg(long, default_value_t = 120)]
        max_duration: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cli.cmd))
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Legacy { listen, payments } => {
            let payments = payments.map(PaymentsClient::new);
            serve(listen, Legacy { payments }).await
        }
        Cmd::Candidate {
            listen,
            profile,
            mail_host,
            payments,
        } => {
            let payments = payments.map(PaymentsClient::new);
            let candidate = Candidate {
                profile,
                mail_host,
                payments,
            };
            serve(listen, candidate).await
        }
        Cmd::Payments { listen, count_file } => {
            serve(
                listen,
                Payments {
                    count_file,
                    ..Default::default()
                },
            )
            .await
        }
        Cmd::Echo { listen } => {
            let listener = bind(listen).await?;
            let (stop, stopped) = http::shutdown_channel();
            let task = tokio::spawn(echo::serve(listener, stopped));
            http::signal().await.context("installing signal handlers")?;
            let _ = stop.send(true);
            task.await.context("echo task")?;
            Ok(())
        }
        Cmd::EchoLoad {
            target,
            keepalive,
            pipelining,
            batch,
            duration_secs,
            requests_per_connection,
        } => {
            // SIGTERM/SIGINT end the run early; the summary is printed either way.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let on_signal = Arc::clone(&stop);
            tokio::spawn(async move {
                if http::signal().await.is_ok() {
                    on_signal.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let cfg = echo::LoadConfig {
                target,
                keepalive,
                pipelining,
                batch,
                duration: Duration::from_secs(duration_secs),
                requests_per_connection,
            };
            let summary = echo::load(cfg, stop).await;
            println!("{summary}");
            anyhow::ensure!(
                summary.wrong_id == 0,
                "responses carried another request's id"
            );
            Ok(())
        }
        Cmd::Reflect { listen } => serve(listen, Reflect).await,
        Cmd::MailSink { listen, count_file } => {
            let listener = bind(listen).await?;
            let (stop, stopped) = http::shutdown_channel();
            let task = tokio::spawn(mail::sink(
                listener,
                Arc::new(mail::Sink::new(count_file)),
                stopped,
            ));
            http::signal().await.context("installing signal handlers")?;
            let _ = stop.send(true);
            task.await.context("mail sink task")?;
            Ok(())
        }
        Cmd::Load {
            target,
            requests,
            concurrency,
            rate,
            max_duration,
        } => {
            anyhow::ensure!(
                rate.is_none_or(|r| r > 0.0 && r.is_finite()),
                "--rate must be a positive number"
            );
            let cfg = load::LoadConfig {
                target,
                requests,
                concurrency,
                rate,
                max_duration: Duration::from_secs(max_duration),
            };
            let summary = tokio::select! {
                s = load::run(cfg) => s,
                r = http::signal() => {
                    r.context("installing signal handlers")?;
                    anyhow::bail!("interrupted");
                }
            };
            println!("{summary}");
            anyhow::ensure!(
                summary.failed == 0 && summary.not_sent == 0,
                "some requests got no response"
            );
            Ok(())
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    // First stdout line: the real address, so callers can use port 0.
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

async fn serve<H: Handler>(addr: SocketAddr, handler: H) -> anyhow::Result<()> {
    let listener = bind(addr).await?;
    let (stop, stopped) = http::shutdown_channel();
    let task = tokio::spawn(http::serve(listener, Arc::new(handler), stopped));
    http::signal().await.context("installing signal handlers")?;
    tracing::info!("stopping: finishing in-flight requests");
    let _ = stop.send(true);
    task.await.context("server task")?;
    Ok(())
}
