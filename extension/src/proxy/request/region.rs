//! Cross-region detection: an AWS endpoint in another region than the function's pays
//! inter-region latency and data transfer, usually by accident (a hard-coded region, a
//! bucket created elsewhere). The host-name parsing lives in [`crate::aws`], which the
//! diagnosis shares.

#[cfg(test)]
use crate::aws::aws_region_of;
pub(crate) use crate::aws::is_cross_region;

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
