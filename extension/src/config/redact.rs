//! Masking what may be a credential before a configuration value is shown anywhere (a log
//! line, the status page): a URL's user info and every query value. Applied to whole texts,
//! so a value quoted inside an error message is masked too.

/// Characters that end a URL or a query inside a longer text.
fn ends_token(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | ',' | '|' | ';' | '(' | ')' | '<' | '>' | '\\' | '`'
        )
}

const MASK: &str = "***";

/// `https://user:pass@host/p?key=abc&flag` → `https://***@host/p?key=***&***`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(ends_token).unwrap_or(rest.len());
        let (token, after) = rest.split_at(end);
        out.push_str(&redact_token(token));
        let delimiter = after.chars().next().map_or(0, char::len_utf8);
        out.push_str(&after[..delimiter]);
        rest = &after[delimiter..];
    }
    out
}

fn redact_token(token: &str) -> String {
    let (before_query, query) = match token.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (token, None),
    };
    let mut out = String::with_capacity(token.len());
    match before_query.split_once("://") {
        Some((scheme, after_scheme)) => {
            let authority_end = after_scheme.find(['/', '#']).unwrap_or(after_scheme.len());
            let (authority, path) = after_scheme.split_at(authority_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    out.push_str(MASK);
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        let (query, fragment) = match query.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (query, None),
        };
        out.push('?');
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={MASK}"),
                None if pair.is_empty() => String::new(),
                None => MASK.to_owned(),
            })
            .collect();
        out.push_str(&masked.join("&"));
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn user_info_and_query_values_are_masked_wherever_they_stand() {
        assert_eq!(
            redact("https://user:hunter2@api.example.com:8443/v1?api_key=s3cr3t&flag#top"),
            "https://***@api.example.com:8443/v1?api_key=***&***#top"
        );
        assert_eq!(
            redact(r#"invalid "a=https://u:p@h|https://h2?token=t" (must not carry credentials)"#),
            r#"invalid "a=https://***@h|https://h2?token=***" (must not carry credentials)"#
        );
        assert_eq!(
            redact("host.example.com/path?sig=abc"),
            "host.example.com/path?sig=***"
        );
        assert_eq!(
            redact("nothing to hide: api.example.com:443, 10.0.0.0/8"),
            "nothing to hide: api.example.com:443, 10.0.0.0/8"
        );
        assert_eq!(
            redact("https://host/p@x"),
            "https://host/p@x",
            "an @ in the path is no user info"
        );
        assert_eq!(
            redact("ünïcode https://ü:ß@h ok"),
            "ünïcode https://***@h ok"
        );
    }
}
