"""The seccomp filter of every crun/runc sandbox: an allow-list, refused calls get EPERM.

The syscall names are Docker's default profile (moby/profiles ``seccomp/default.json``,
revision of 2026-05: its unconditional list, plus what it grants for kernels >= 4.8
(``ptrace``, ``process_vm_readv``/``writev``), for amd64 (``arch_prctl``) and for the
capabilities a sandbox has (``chroot`` with CAP_SYS_CHROOT)). An allow-list means a syscall
added to a future kernel is refused until it is reviewed, where a deny-list let through
whatever was not named (``io_uring_*`` among them). Where we differ from Docker, and why:

* ``modify_ldt`` is refused (Docker allows it on x86): 16-bit segments serve Wine and
  DOSEMU, not an agent's work, and the LDT code has a history of kernel bugs
  (CVE-2015-5157, CVE-2015-8539, CVE-2017-17053);
* ``socket`` takes the families AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK only (Docker:
  everything but AF_ALG and AF_VSOCK). AF_VSOCK is not network-namespaced (it reaches the
  host's and hypervisor's vsock services whatever the sandbox's networking), AF_PACKET and
  the rarely used families (AF_ALG, AF_KEY, AF_XDP, AF_RDS, AF_TIPC, AF_CAN, Bluetooth, …)
  are kernel attack surface with no use in a sandbox. The list is the same with networking
  off: an offline sandbox's netns holds only ``lo``, so INET sockets reach the sandbox
  itself (a test server on 127.0.0.1) and nothing else;
* ``socketcall`` (the 32-bit x86 multiplexer, whose arguments seccomp cannot read) is
  allowed except for its SYS_SOCKET call, so the family filter cannot be bypassed through
  it: 32-bit programs create sockets with the direct ``socket`` syscall (kernel >= 4.3).

Also as Docker: ``personality`` only with the harmless personas (so READ_IMPLIES_EXEC
cannot make every mapping executable), ``clone`` only without namespace flags (there is no
CAP_SYS_ADMIN), ``clone3`` answers ENOSYS (its flags sit in a struct seccomp cannot read;
libc falls back to ``clone``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["seccomp_profile"]

_EPERM = 1
_ENOSYS = 38

# Docker's default allow-list (moby/profiles seccomp/default.json, see above): names only,
# the data of that profile; `socketcall` is left to the rule below.
_ALLOWED = (
    "_llseek", "_newselect", "accept", "accept4", "access", "adjtimex", "alarm", "arch_prctl",
    "bind", "brk", "cachestat", "capget", "capset", "chdir", "chmod", "chown", "chown32",
    "chroot", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
    "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close",
    "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "get_robust_list", "get_thread_area", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp",
    "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "getxattrat", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "ioctl",
    "ioprio_get", "ioprio_set", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listmount", "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
    "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2",
    "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "process_vm_readv", "process_vm_writev",
    "pselect6", "pselect6_time64", "ptrace", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "removexattrat", "rename",
    "renameat", "renameat2", "restart_syscall", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_robust_list",
    "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
    "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority",
    "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid",
    "setreuid32", "setrlimit", "setsid", "setsockopt", "setuid", "setuid32", "setxattr",
    "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigprocmask", "sigreturn", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statmount", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "uretprobe", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4",
    "waitid", "waitpid", "write", "writev",
)  # fmt: skip

_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16
_SOCKET_FAMILIES = (_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK)
_SYS_SOCKET = 1
# PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (query only).
_PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NAMESPACES = 0x7E020000


def _arg_rule(name: str, index: int, value: int, op: str, **extra: int) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value, "op": op, **extra}
    return {"names": [name], "action": "SCMP_ACT_ALLOW", "args": [arg]}


def seccomp_profile(*, sentry: bool = False) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object (rules on one syscall are alternatives).

    ``sentry``: for gVisor's ``--oci-seccomp``, which answers EPERM where a rule asks for
    another errno; ``clone3`` is then let through to the Sentry, which does not implement it
    and answers ENOSYS itself.
    """
    clone3: dict[str, Any] = (
        {"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}
        if sentry
        else {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS}
    )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": _EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": list(_ALLOWED), "action": "SCMP_ACT_ALLOW"},
            *(_arg_rule("socket", 0, family, "SCMP_CMP_EQ") for family in _SOCKET_FAMILIES),
            _arg_rule("socketcall", 0, _SYS_SOCKET, "SCMP_CMP_NE"),
            *(_arg_rule("personality", 0, persona, "SCMP_CMP_EQ") for persona in _PERSONAS),
            _arg_rule("clone", 0, _CLONE_NAMESPACES, "SCMP_CMP_MASKED_EQ", valueTwo=0),
            clone3,
        ],
    }
