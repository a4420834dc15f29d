//! How many threads run the async runtime (the proxy, the lifecycle, metrics).
//!
//! Lambda gives a function and its extensions CPU in proportion to memory: one vCPU at
//! 1,769 MB, a fraction below, while the sandbox still shows two or more CPUs. Worker threads
//! beyond the CPU share buy no parallelism, only cross-thread wake-ups: with the proxy held to
//! 0.25 CPU, one worker carried 1.3× the keep-alive requests and 1.6× the new HTTPS
//! connections of two (docs/PERFORMANCE.md). So: one worker per whole vCPU the memory buys, at
//! least one, at most the CPUs present. `TOKIO_WORKER_THREADS` (tokio's own variable) overrides.
//! The DNS listener's UDP thread is separate and not counted here.

/// Memory that buys one whole vCPU in Lambda.
const MB_PER_VCPU: u64 = 1769;

/// Worker threads for `memory_mb` (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`), an override
/// (`TOKIO_WORKER_THREADS`) and the CPUs present. Unknown memory (not in Lambda) counts as one
/// vCPU's worth.
pub(super) fn worker_threads(
    memory_mb: Option<&str>,
    wanted: Option<&str>,
    cpus: usize,
    managed_instances: bool,
) -> usize {
    if let Some(n) = wanted.and_then(|w| w.trim().parse::<usize>().ok()) {
        if n > 0 {
            return n;
        }
    }
    if managed_instances {
        return cpus.max(1);
    }
    let vcpus = memory_mb
        .and_then(|m| m.trim().parse::<u64>().ok())
        .map_or(1, |mb| mb / MB_PER_VCPU);
    (vcpus as usize).clamp(1, cpus.max(1))
}

/// [`worker_threads`] from this process's environment.
pub(super) fn from_env() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    worker_threads(
        std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .as_deref(),
        std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(),
        cpus,
        std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE")
            .is_ok_and(|t| t == "lambda-managed-instances"),
    )
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn one_worker_per_whole_vcpu_the_memory_buys() {
        assert_eq!(worker_threads(Some("128"), None, 2, false), 1);
        assert_eq!(worker_threads(Some("1769"), None, 2, false), 1);
        assert_eq!(worker_threads(Some("3008"), None, 2, false), 1);
        assert_eq!(worker_threads(Some("3538"), None, 2, false), 2);
        assert_eq!(worker_threads(Some("10240"), None, 6, false), 5);
    }

    #[test]
    fn never_more_than_the_cpus_present_nor_fewer_than_one() {
        assert_eq!(worker_threads(Some("10240"), None, 2, false), 2);
        assert_eq!(worker_threads(Some("0"), None, 2, false), 1);
        assert_eq!(worker_threads(Some("10240"), None, 0, false), 1);
    }

    #[test]
    fn managed_instances_use_every_cpu_present() {
        assert_eq!(worker_threads(Some("2048"), None, 4, true), 4);
        assert_eq!(worker_threads(Some("2048"), Some("2"), 4, true), 2);
        assert_eq!(worker_threads(Some("2048"), None, 0, true), 1);
    }

    #[test]
    fn unknown_memory_counts_as_one_vcpu() {
        assert_eq!(worker_threads(None, None, 4, false), 1);
        assert_eq!(worker_threads(Some("lots"), None, 4, false), 1);
    }

    #[test]
    fn tokio_worker_threads_overrides_when_it_is_a_positive_number() {
        assert_eq!(worker_threads(Some("128"), Some("3"), 2, false), 3);
        assert_eq!(worker_threads(Some("128"), Some("0"), 2, false), 1);
        assert_eq!(worker_threads(Some("3538"), Some("many"), 2, false), 2);
    }
}
