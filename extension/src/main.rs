use std::process::ExitCode;

fn main() -> ExitCode {
    egress_warden::lifecycle::main()
}
