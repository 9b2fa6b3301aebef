//! The OpenFeature API, with flag-sdk as its provider.
//!
//! ```sh
//! FLAG_SDK_TOKEN=flg_sdk_… cargo run -p flag-sdk --features openfeature --example openfeature
//! ```

use flag_sdk::FlagClient;
use flag_sdk::openfeature::FlagProvider;
use open_feature::{EvaluationContext, OpenFeature};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server =
        std::env::var("FLAG_SDK_SERVER").unwrap_or_else(|_| "http://127.0.0.1:8016".to_owned());
    let token =
        std::env::var("FLAG_SDK_TOKEN").map_err(|_| "set FLAG_SDK_TOKEN to an sdk token")?;
    let client = FlagClient::builder().server(server).token(token).build()?;

    let mut api = OpenFeature::singleton_mut().await;
    // `set_provider` runs the provider's initialize, which waits (up to 5 s) for the flags.
    api.set_provider(FlagProvider::new(client)).await;
    let flags = api.create_client();
    drop(api);

    let user = EvaluationContext::default()
        .with_targeting_key("user-42")
        .with_custom_field("email", "ada@example.com");
    let details = flags
        .get_bool_details("new-checkout", Some(&user), None)
        .await;
    match details {
        Ok(details) => println!(
            "new-checkout = {} ({:?}, variant {:?})",
            details.value, details.reason, details.variant
        ),
        Err(error) => println!("new-checkout: {error:?} (the default applies)"),
    }
    Ok(())
}
