//! The seccomp filter installed in every child the agent starts when run with `--seccomp`.
//!
//! Built with the pure-Rust `seccompiler` (no libseccomp), compiled once at start-up and applied
//! in the child between fork and exec (`apply_filter` does not allocate). Everything not listed
//! is allowed: this is a deny-list that closes the kernel interfaces a sandbox must never use
//! (mounts, namespaces, modules, tracing, keyrings, clocks), on top of the runtime's own
//! namespaces and `no_new_privs`. The list is documented in `docs/agent-protocol.md`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Syscalls denied outright with `EPERM`.
pub fn denied_syscalls() -> Vec<(&'static str, i64)> {
    let mut v: Vec<(&'static str, i64)> = vec![
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("chroot", libc::SYS_chroot),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("reboot", libc::SYS_reboot),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("pidfd_getfd", libc::SYS_pidfd_getfd),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("setns", libc::SYS_setns),
        ("unshare", libc::SYS_unshare),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("acct", libc::SYS_acct),
        ("quotactl", libc::SYS_quotactl),
        ("syslog", libc::SYS_syslog),
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("adjtimex", libc::SYS_adjtimex),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([("iopl", libc::SYS_iopl), ("ioperm", libc::SYS_ioperm)]);
    v
}

/// Namespace flags that make `clone` fail with `EPERM`.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// The compiled filters: `eperm` (the deny-list, `clone` with namespace flags, device
/// `mknod`) and `enosys` (`clone3`, whose flags live in memory a filter cannot read; libc
/// falls back to `clone` on `ENOSYS`).
#[derive(Debug, Clone)]
pub struct Filters {
    eperm: BpfProgram,
    enosys: BpfProgram,
}

/// Builds the filters for the running architecture.
pub fn build() -> Result<Filters, String> {
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(|e| format!("seccomp: {e}"))?;
    let err = |e: seccompiler::BackendError| format!("seccomp: {e}");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in denied_syscalls() {
        rules.insert(nr, vec![]);
    }
    let mut clone_rules = Vec::new();
    for flag in NS_FLAGS {
        let cond =
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag), *flag).map_err(err)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(err)?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    // Device nodes only: FIFOs and regular files made with mknod stay allowed.
    let dev_rules = |arg: u8| -> Result<Vec<SeccompRule>, String> {
        let mut out = Vec::new();
        for kind in [libc::S_IFCHR, libc::S_IFBLK] {
            let c = SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                u64::from(kind),
            )
            .map_err(err)?;
            out.push(SeccompRule::new(vec![c]).map_err(err)?);
        }
        Ok(out)
    };
    rules.insert(libc::SYS_mknodat, dev_rules(2)?);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_mknod, dev_rules(1)?);
    let eperm =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(err)?;
    let enosys = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    Ok(Filters {
        eperm: eperm.try_into().map_err(|e: seccompiler::BackendError| format!("seccomp: {e}"))?,
        enosys: enosys.try_into().map_err(|e: seccompiler::BackendError| format!("seccomp: {e}"))?,
    })
}

impl Filters {
    /// Sets `no_new_privs` and installs both filters in the calling thread. Async-signal-safe
    /// on success (no allocation), so it may run between fork and exec.
    pub fn apply(&self) -> std::io::Result<()> {
        seccompiler::apply_filter(&self.eperm).map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
        seccompiler::apply_filter(&self.enosys).map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let f = build().expect("filters build");
        assert!(f.eperm.len() > denied_syscalls().len(), "every denied syscall has instructions");
        assert!(!f.enosys.is_empty());
    }
}
