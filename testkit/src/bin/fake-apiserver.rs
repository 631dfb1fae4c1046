//! Runs the fake Kubernetes API server until Ctrl-C, printing its URL and then every request
//! it receives (method, path and query, WebSocket or not, status, client), for a developer to
//! point `spark-submit --master k8s://URL` or `kubectl --server URL` at.
//!
//! Usage: `cargo run -p kshuffle-testkit --bin fake-apiserver`

use std::time::Duration;

use kshuffle_testkit::FakeApiServer;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let server = FakeApiServer::start().await?;
    println!("fake API server at {}", server.url());
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; break; }
            _ = tick.tick() => {}
        }
        // The log keeps the last requests only; print what is new since the last tick.
        let from = seen;
        for r in server.requests().iter().filter(|r| r.seq > from) {
            let query = if r.query.is_empty() {
                String::new()
            } else {
                format!("?{}", r.query)
            };
            let ws = if r.websocket { " [websocket]" } else { "" };
            println!(
                "{} {} {}{}{} ({})",
                r.status, r.method, r.path, query, ws, r.user_agent
            );
            seen = r.seq;
        }
    }
    server.shutdown().await;
    Ok(())
}
