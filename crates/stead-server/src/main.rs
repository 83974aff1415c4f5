//! The `stead` server binary.

use clap::Parser;

/// A multi-threaded allocator: glibc's arenas contend under many small allocations
/// across the runtime's worker threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let mut cli = stead_server::Cli::parse();
    if let Some(stead_server::Command::Backup { dest }) = cli.command.take() {
        return backup(cli, &dest);
    }
    let config = match stead_server::Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stead: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stead: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The handlers are installed before the server binds: a signal that arrives once it
    // answers must stop it gracefully, never kill it.
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal();
        stead_server::serve(config, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stead: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `stead backup DEST`: copies the data directory (`--data-dir`, its variable or the
/// configuration file's, else `./data`) and says what it copied and how long it took.
fn backup(cli: stead_server::Cli, dest: &std::path::Path) -> std::process::ExitCode {
    let config = match stead_server::Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stead: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match stead::SqliteBackend::backup(&config.data_dir, dest) {
        Ok(r) => {
            println!(
                "copied {} ({} shards, {} bytes) to {} in {} ms",
                config.data_dir.display(),
                r.shards,
                r.bytes,
                dest.display(),
                r.elapsed.as_millis()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stead: backup failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, and returns a future that completes on
/// either. (Within the runtime: tokio's signal streams need it.)
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        match streams {
            Ok((mut interrupt, mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                // A second signal does not wait for the graceful shutdown.
                tokio::spawn(async move {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                    eprintln!("stead: a second signal: exiting at once");
                    std::process::exit(130);
                });
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down: finishing requests in flight and flushing commits");
    }
}
