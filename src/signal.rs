//! Waiting for the signals that ask a long-running process to stop.

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C). Where SIGTERM cannot be
/// watched, Ctrl-C alone still works.
pub async fn terminate_or_interrupt() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
