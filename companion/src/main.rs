fn main() -> std::process::ExitCode {
    fallback_companion::cli::main()
}
