//! Prints the AsyncWorkerPool CRD generated from the Rust types; `scripts/gen-crds` writes it
//! to `crds/` and the Helm chart.

fn main() -> std::process::ExitCode {
    match asyncpool::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("crdgen: cannot serialize the CRD: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
