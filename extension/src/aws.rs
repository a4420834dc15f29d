//! What an AWS endpoint host name says: its region and service. Shared by the proxy (to count
//! cross-region requests) and the diagnosis (to name the VPC endpoint a service needs).

/// The region an AWS endpoint host name names, if any: `s3.eu-west-1.amazonaws.com`,
/// `bucket.s3.dualstack.us-east-2.amazonaws.com`, `s3-us-west-2.amazonaws.com`,
/// `ec2.cn-north-1.amazonaws.com.cn`, `dynamodb.us-east-1.api.aws`. Global endpoints
/// (`sts.amazonaws.com`, `iam.amazonaws.com`) name none.
pub fn aws_region_of(host: &str) -> Option<&str> {
    // The region is the label nearest the suffix that looks like one.
    aws_labels(host)?.rsplit('.').find_map(region_in_label)
}

/// Whether `host` is an AWS endpoint of a region other than `home`.
pub fn is_cross_region(host: &str, home: Option<&str>) -> bool {
    match (aws_region_of(host), home) {
        (Some(region), Some(home)) => region != home,
        _ => false,
    }
}

/// An AWS service endpoint named by a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsEndpoint<'a> {
    /// `s3`, `dynamodb`, `sts`, `monitoring`…
    pub service: &'a str,
    /// None for global endpoints (`sts.amazonaws.com`).
    pub region: Option<&'a str>,
}

impl AwsEndpoint<'_> {
    /// S3 and DynamoDB have free gateway endpoints; every other service an interface one.
    pub fn has_gateway_endpoint(&self) -> bool {
        matches!(self.service, "s3" | "dynamodb")
    }

    /// `com.amazonaws.<region>.<service>`, the VPC endpoint service name.
    pub fn vpc_endpoint_name(&self, fallback_region: Option<&str>) -> String {
        let region = self.region.or(fallback_region).unwrap_or("<region>");
        format!("com.amazonaws.{region}.{}", self.service)
    }
}

/// The service and region of an AWS endpoint host, or None for any other host.
pub fn aws_endpoint_of(host: &str) -> Option<AwsEndpoint<'_>> {
    let rest = aws_labels(host)?;
    // Right to left: the region label, then the service is the nearest label before it
    // that is not an endpoint variant. Without a region label, the nearest such label.
    let mut region = None;
    let mut labels = rest.rsplit('.');
    for label in labels.by_ref() {
        if let Some(r) = region_in_label(label) {
            if r != label {
                // The legacy `s3-<region>` / `s3-website-<region>` forms.
                return Some(AwsEndpoint {
                    service: "s3",
                    region: Some(r),
                });
            }
            region = Some(r);
            break;
        }
    }
    let service = match region {
        Some(_) => labels.find(|l| !is_endpoint_variant(l)),
        None => rest.rsplit('.').find(|l| !is_endpoint_variant(l)),
    }?;
    let service = service.strip_suffix("-fips").unwrap_or(service);
    (!service.is_empty()).then_some(AwsEndpoint { service, region })
}

/// Labels that say how an endpoint is reached, not which service it is.
fn is_endpoint_variant(label: &str) -> bool {
    matches!(label, "dualstack" | "fips" | "vpce" | "") || label.starts_with("vpce-")
}

/// The host without its AWS suffix, or None for a host that is not an AWS endpoint.
fn aws_labels(host: &str) -> Option<&str> {
    ["amazonaws.com.cn", "amazonaws.com", "api.aws"]
        .iter()
        .find_map(|suffix| host.strip_suffix(suffix)?.strip_suffix('.'))
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
    // Runs for every label of every AWS host the proxy sees: no allocation.
    let parts = label.split('-').count();
    if !(3..=4).contains(&parts) {
        return false;
    }
    let mut split = label.split('-');
    let first = split.next().unwrap_or_default();
    let last = label.rsplit('-').next().unwrap_or_default();
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
        && split
            .take(parts - 2)
            .all(|p| p.len() >= 3 && p.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(host: &str) -> Option<(&str, Option<&str>)> {
        aws_endpoint_of(host).map(|e| (e.service, e.region))
    }

    #[test]
    fn services_and_regions_of_endpoints() {
        assert_eq!(
            endpoint("s3.eu-west-1.amazonaws.com"),
            Some(("s3", Some("eu-west-1")))
        );
        assert_eq!(
            endpoint("bucket.s3.dualstack.us-east-2.amazonaws.com"),
            Some(("s3", Some("us-east-2")))
        );
        assert_eq!(
            endpoint("s3-us-west-2.amazonaws.com"),
            Some(("s3", Some("us-west-2")))
        );
        assert_eq!(
            endpoint("vpce-0a1b-abc.s3.eu-central-1.vpce.amazonaws.com"),
            Some(("s3", Some("eu-central-1")))
        );
        assert_eq!(
            endpoint("dynamodb.ap-southeast-2.api.aws"),
            Some(("dynamodb", Some("ap-southeast-2")))
        );
        assert_eq!(
            endpoint("sqs-fips.us-gov-west-1.amazonaws.com"),
            Some(("sqs", Some("us-gov-west-1")))
        );
        assert_eq!(endpoint("sts.amazonaws.com"), Some(("sts", None)));
        assert_eq!(endpoint("bucket.s3.amazonaws.com"), Some(("s3", None)));
        assert_eq!(endpoint("us-east-1.amazonaws.com"), None);
        assert_eq!(endpoint("example.com"), None);
        assert_eq!(endpoint("notamazonaws.com"), None);
    }

    #[test]
    fn vpc_endpoint_names() {
        let s3 = aws_endpoint_of("s3.eu-west-1.amazonaws.com").unwrap();
        assert!(s3.has_gateway_endpoint());
        assert_eq!(
            s3.vpc_endpoint_name(Some("us-east-1")),
            "com.amazonaws.eu-west-1.s3"
        );
        let sts = aws_endpoint_of("sts.amazonaws.com").unwrap();
        assert!(!sts.has_gateway_endpoint());
        assert_eq!(
            sts.vpc_endpoint_name(Some("us-east-1")),
            "com.amazonaws.us-east-1.sts"
        );
    }
}
