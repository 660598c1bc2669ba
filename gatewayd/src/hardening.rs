//! Process hardening for the one process that holds every key: no core dumps, not
//! dumpable (like ssh-agent). A core file would hold the master key and decrypted
//! credentials; a dumpable process lets any process of the same uid attach with `ptrace`
//! or read `/proc/PID/mem`.

/// Sets `RLIMIT_CORE` to 0 (soft and hard) and clears the dumpable flag
/// (`PR_SET_DUMPABLE`), which also makes `/proc/PID/mem`, `environ` and friends unreadable
/// to other processes of the same uid and refuses their `ptrace`. Children started with
/// `exec` (the tools of `nkmc run`) get the flag back, as the kernel resets it on exec.
pub fn forbid_core_dumps() -> Result<(), nix::Error> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::prctl::set_dumpable(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_core_and_not_dumpable() {
        forbid_core_dumps().unwrap();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
        assert_eq!((soft, hard), (0, 0));
    }
}
