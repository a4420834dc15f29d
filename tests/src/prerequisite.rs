//! Tools and capabilities a test needs but the harness cannot provide (root, namespaces, a
//! cgroup controller, a file beside the repository). On a developer's machine a missing one
//! skips the test with a note; under CI it fails the test, so a broken runner cannot turn the
//! suite green by skipping.

/// Whether CI runs the tests (`CI=true`, as CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `available`'s value when the prerequisite `name` is there. When it is not (`Err` with why,
/// and how to install it): panics under CI, else prints the reason and returns `None` so the
/// test can return early.
///
/// ```ignore
/// let Some(()) = prerequisite("network-namespace lab", netns::available()) else { return };
/// ```
pub fn prerequisite<T>(name: &str, available: Result<T, String>) -> Option<T> {
    match available {
        Ok(v) => Some(v),
        Err(why) => {
            // libtest names each test's thread after the test (bar one thread: "main").
            let thread = std::thread::current();
            let test = thread.name().filter(|n| *n != "main").unwrap_or("test");
            assert!(
                !in_ci(),
                "{test}: prerequisite missing under CI: {name}: {why}"
            );
            eprintln!("{test}: skipped: prerequisite missing: {name}: {why}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: it sets CI, which the process shares.
    #[test]
    fn a_missing_prerequisite_skips_outside_ci_and_fails_under_ci() {
        let before = std::env::var_os("CI");
        std::env::remove_var("CI");
        assert_eq!(prerequisite("tool", Ok::<_, String>(7)), Some(7));
        assert_eq!(prerequisite::<()>("tool", Err("install it".into())), None);
        std::env::set_var("CI", "true");
        assert_eq!(prerequisite("tool", Ok::<_, String>(7)), Some(7));
        let failed = std::panic::catch_unwind(|| {
            prerequisite::<()>("tool", Err("apt-get install tool".into()))
        });
        match before {
            Some(v) => std::env::set_var("CI", v),
            None => std::env::remove_var("CI"),
        }
        let message = failed.expect_err("fails under CI");
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(
            message.contains("tool") && message.contains("apt-get install tool"),
            "{message}"
        );
    }
}
