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

/// A URL with its credentials (`user:password@`) masked, for everything shown or stored; any
/// other text has `user:password@host` patterns masked the same way.
pub fn redacted(text: &str) -> String {
    if let Ok(mut url) = reqwest::Url::parse(text)
        && (!url.username().is_empty() || url.password().is_some())
    {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
        return url.to_string();
    }
    // Error texts may quote a URL inside a sentence.
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(' ') {
        match word.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let after = rest.split_once('@').map_or(rest, |(_, host)| host);
                out.push_str(&format!("{scheme}://***@{after}"));
            }
            _ => out.push_str(word),
        }
    }
    out
}

/// At most `max` characters of `text`, control characters as spaces: what a peer says, fit to
/// store and show.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
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
