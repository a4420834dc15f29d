//! Walking an error's `source()` chain, bounded: chains are short, and the bound only guards
//! against a cyclic `source()`.

use std::error::Error;

const MAX_DEPTH: usize = 16;

/// The error and its sources, outermost first.
pub fn sources<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source()).take(MAX_DEPTH)
}

/// The first error of type `T` in the chain.
pub fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    sources(err).find_map(|e| e.downcast_ref::<T>())
}

/// "outer: inner: innermost", for logs.
pub fn describe(err: &(dyn Error + 'static)) -> String {
    sources(err)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Outer(io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn finds_and_describes_through_the_chain() {
        let err = Outer(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(describe(&err), "outer: reset");
        let found = find::<io::Error>(&err).map(io::Error::kind);
        assert_eq!(found, Some(io::ErrorKind::ConnectionReset));
        assert!(find::<std::fmt::Error>(&err).is_none());
    }
}
