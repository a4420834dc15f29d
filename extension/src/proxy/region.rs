//! Cross-region detection: an AWS endpoint in another region than the function's pays
//! inter-region latency and data transfer, usually by accident (a hard-coded region, a
//! bucket created elsewhere).

/// The region an AWS endpoint host name names, if any: `s3.eu-west-1.amazonaws.com`,
/// `bucket.s3.dualstack.us-east-2.amazonaws.com`, `s3-us-west-2.amazonaws.com`,
/// `ec2.cn-north-1.amazonaws.com.cn`, `dynamodb.us-east-1.api.aws`. Global endpoints
/// (`sts.amazonaws.com`, `iam.amazonaws.com`) name none.
pub(crate) fn aws_region_of(host: &str) -> Option<&str> {
    let rest = ["amazonaws.com.cn", "amazonaws.com", "api.aws"]
        .iter()
        .find_map(|suffix| host.strip_suffix(suffix)?.strip_suffix('.'))?;
    // The region is the label nearest the suffix that looks like one.
    rest.rsplit('.').find_map(region_in_label)
}

/// `us-east-1`, or the legacy S3 forms `s3-us-west-2` / `s3-website-eu-west-1`.
fn region_in_label(label: &str) -> Option<&str> {
    if looks_like_region(label) {
        return Some(label);
    }
    ["s3-website-", "s3-website.", "s3-"]
        .iter()
        .find_map(|p| label.strip_prefix(p))
        .filter(|r| looks_like_region(r))
}

/// `<area>-<direction>-<n>`, with optional partition infix: us-east-1, us-gov-west-1,
/// eu-central-2, ap-southeast-4, il-central-1, us-isob-east-1.
fn looks_like_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    if !(3..=4).contains(&parts.len()) {
        return false;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| p.len() >= 3 && p.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Whether `host` is an AWS endpoint of a region other than `home`.
pub(crate) fn is_cross_region(host: &str, home: Option<&str>) -> bool {
    match (aws_region_of(host), home) {
        (Some(region), Some(home)) => region != home,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_of_endpoints() {
        assert_eq!(
            aws_region_of("s3.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(
            aws_region_of("dynamodb.us-east-1.amazonaws.com"),
            Some("us-east-1")
        );
        assert_eq!(
            aws_region_of("bucket.s3.dualstack.us-east-2.amazonaws.com"),
            Some("us-east-2")
        );
        assert_eq!(
            aws_region_of("s3-us-west-2.amazonaws.com"),
            Some("us-west-2")
        );
        assert_eq!(
            aws_region_of("ec2.cn-north-1.amazonaws.com.cn"),
            Some("cn-north-1")
        );
        assert_eq!(
            aws_region_of("logs.us-gov-west-1.amazonaws.com"),
            Some("us-gov-west-1")
        );
        assert_eq!(
            aws_region_of("dynamodb.ap-southeast-2.api.aws"),
            Some("ap-southeast-2")
        );
        assert_eq!(
            aws_region_of("vpce-0a1b-abc.s3.eu-central-1.vpce.amazonaws.com"),
            Some("eu-central-1")
        );
        assert_eq!(aws_region_of("sts.amazonaws.com"), None);
        assert_eq!(aws_region_of("example.com"), None);
        assert_eq!(aws_region_of("notamazonaws.com"), None);
        assert_eq!(aws_region_of("us-east-1.example.com"), None);
    }

    #[test]
    fn cross_region() {
        assert!(is_cross_region(
            "s3.eu-west-1.amazonaws.com",
            Some("us-east-1")
        ));
        assert!(!is_cross_region(
            "s3.us-east-1.amazonaws.com",
            Some("us-east-1")
        ));
        assert!(!is_cross_region("sts.amazonaws.com", Some("us-east-1")));
        assert!(!is_cross_region("s3.eu-west-1.amazonaws.com", None));
    }
}
