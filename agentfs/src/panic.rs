//! A panic hook for the nkmc programs that never prints a panic's message.
//!
//! Rust's default hook prints the message, and a message can hold anything the code had in
//! hand: an `expect` formatting a request, an `unwrap` on an error quoting an upstream body,
//! a credential. gatewayd holds every key, mountd and nkmc hold agent tokens, and their
//! stderr goes to log files, so the hook prints where the panic happened (file, line,
//! thread) and a backtrace when `RUST_BACKTRACE` asks for one (function names only, no
//! data), never the message.

/// Replaces the panic hook of this process with one that names `program` and the place of
/// the panic, never its message.
pub fn install_quiet_hook(program: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{}", describe(program, info.location(), std::thread::current().name()));
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("{backtrace}");
        }
    }));
}

/// The line the hook prints.
fn describe(program: &str, location: Option<&std::panic::Location<'_>>, thread: Option<&str>) -> String {
    let place = location.map_or_else(|| "an unknown place".to_owned(), |l| format!("{}:{}", l.file(), l.line()));
    format!(
        "{program}: internal error: thread `{}` panicked at {place}; the panic's message is not shown (it may \
         hold a secret); please report this place as a bug",
        thread.unwrap_or("unnamed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_place_only() {
        let here = std::panic::Location::caller();
        let line = describe("gatewayd", Some(here), Some("worker"));
        assert!(line.starts_with("gatewayd: internal error: thread `worker` panicked at "), "{line}");
        assert!(line.contains(&format!("{}:{}", here.file(), here.line())), "{line}");
        assert!(describe("nkmc", None, None).contains("`unnamed` panicked at an unknown place"));
    }
}
