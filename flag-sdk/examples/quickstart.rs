//! Quickstart: evaluate a flag from the server the README starts.
//!
//! ```sh
//! cargo run --release -p flagd-server                      # terminal 1
//! TOKEN=$(cat flagd-data/admin-token)                      # terminal 2: an sdk token...
//! SDK=$(curl -s -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
//!   http://127.0.0.1:8016/api/v1/tokens -d '{"name":"quickstart","role":"sdk","environment":"default"}' | jq -r .token)
//! FLAG_SDK_TOKEN=$SDK cargo run -p flag-sdk --example quickstart
//! ```
//!
//! It prints `new-checkout` for a few users, then every change as it streams in (toggle or roll
//! out the flag with curl or flagctl meanwhile). Ctrl-C stops it.

use std::time::Duration;

use flag_sdk::{EvaluationContext, FlagClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server =
        std::env::var("FLAG_SDK_SERVER").unwrap_or_else(|_| "http://127.0.0.1:8016".to_owned());
    let token =
        std::env::var("FLAG_SDK_TOKEN").map_err(|_| "set FLAG_SDK_TOKEN to an sdk token")?;
    let client = FlagClient::builder()
        .server(server)
        .token(token)
        .cache_file(std::env::temp_dir().join("flag-sdk-quickstart.json"))
        .build()?;
    let status = client.wait_ready(Duration::from_secs(5)).await?;
    println!("flags ready ({status}), version {:?}", client.version());

    let users: Vec<EvaluationContext> = (1..=5)
        .map(|i| {
            EvaluationContext::new(format!("user-{i}"))
                .with("email", format!("user{i}@example.com"))
        })
        .collect();
    show(&client, &users);

    let watcher = client.clone();
    let users = users.clone();
    client.on_change(move |change| {
        println!(
            "changed {:?} (version {:?} -> {})",
            change.keys, change.old_version, change.new_version
        );
        show(&watcher, &users);
    });
    client.on_status(|status| println!("status: {status}"));
    tokio::signal::ctrl_c().await?;
    client.close().await;
    Ok(())
}

fn show(client: &FlagClient, users: &[EvaluationContext]) {
    for user in users {
        let details = client.bool_details("new-checkout", user, false);
        println!(
            "  {:<8} new-checkout = {:<5} ({:?}{})",
            user.targeting_key().unwrap_or("?"),
            details.value,
            details.reason,
            details
                .error_code
                .map(|c| format!(", {c}"))
                .unwrap_or_default()
        );
    }
}
