//! Requests the server makes to others (OIDC issuers, Prometheus, Git remotes): an error's whole
//! cause chain for messages, and answers read under a size cap. A leaf any layer may use.

/// An error and its causes, outermost first ("Transport handshake failed: … : connection
/// refused"), so a failed request says why.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The body of `response`, refused once it grows past `max` bytes (so a hostile or broken peer
/// cannot make the server buffer without bound). Errors name `url`.
pub async fn read_capped(
    mut response: reqwest::Response,
    url: &str,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: {}", chain(&e)))?
    {
        if body.len().saturating_add(chunk.len()) > max {
            return Err(format!("GET {url}: the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
