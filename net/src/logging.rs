//! Logging set-up and shutdown signals shared by `starlingd` and `starling dev`.

use tracing_subscriber::EnvFilter;

/// Structured logs to stderr; `STARLING_LOG` (or `RUST_LOG`) filters, default `info`.
pub fn init(json: bool) {
    let filter = std::env::var("STARLING_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colours only on a terminal: `docker logs` and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Most lines a second a [`RateLimitedLog`] lets through.
pub const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Lets one log line through per [`LOG_INTERVAL`] and counts the ones it holds back, so a flood
/// (refused handshakes, refused peer RPCs) costs a line a second rather than a line a packet.
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    /// When the last line was let through, and how many were held back since.
    state: std::sync::Mutex<(Option<tokio::time::Instant>, u64)>,
}

impl RateLimitedLog {
    /// `Some(n)` if a line may be written now (`n` lines were held back since the last one),
    /// `None` if this one is held back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(tokio::time::Instant::now())
    }

    fn allow_at(&self, now: tokio::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.0 {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_a_second_with_the_count_held_back() {
        let log = RateLimitedLog::default();
        let start = tokio::time::Instant::now();
        assert_eq!(log.allow_at(start), Some(0));
        for _ in 0..500 {
            assert_eq!(log.allow_at(start + LOG_INTERVAL / 2), None);
        }
        assert_eq!(log.allow_at(start + LOG_INTERVAL), Some(500));
        assert_eq!(log.allow_at(start + LOG_INTERVAL), None);
        assert_eq!(log.allow_at(start + LOG_INTERVAL * 3), Some(1));
    }
}
