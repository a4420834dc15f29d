//! One request's bookkeeping: header rules for forwarded messages ([`headers`]), the
//! proxy's own refusals and upstream failures as the client sees them ([`outcome`]), the
//! record that counts it and writes its decision line ([`record`]), and the destination's
//! AWS region ([`region`]), the path its bytes take out of the VPC and their cost ([`egress`]).

pub(crate) mod egress;
pub(crate) mod headers;
pub(crate) mod outcome;
pub(crate) mod record;
pub(crate) mod region;
