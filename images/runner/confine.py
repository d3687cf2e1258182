"""Kernel-enforced limits the supervisor puts on the worker before exec (stdlib only).

Called in the forked child, so everything here is inherited by the worker and by every process
the user's code starts; nothing can lift it (seccomp filters stack and never come off, and an
unprivileged process can only lower its rlimits). What it enforces:

- RLIMIT_CORE 1: no core dump, not even to a core_pattern pipe handler on the node.
- RLIMIT_FSIZE: no file the sandbox writes grows past the scratch size. This is what bounds
  writes that escape the pod's storage accounting, the kubelet-created /dev/termination-log
  (mode 0666, on the node's disk) first of all. Past the limit the kernel sends SIGXFSZ.
- A seccomp filter (docs/security.md):
  * fallocate fails with EOPNOTSUPP: FALLOC_FL_KEEP_SIZE would allocate node disk without
    moving the file size that RLIMIT_FSIZE checks; glibc's posix_fallocate then falls back to
    writing, which the rlimit does bound;
  * io_uring_setup/enter/register fail with ENOSYS: io_uring operations are not seen by
    seccomp at all (an IORING_OP_FALLOCATE would bypass the rule above); libuv falls back;
  * kill/tkill/tgkill/rt_(tg)sigqueueinfo/pidfd_send_signal carrying SIGSYS or SIGXFSZ fail
    with EPERM: those two signals then only ever come from the kernel, so the wait status is
    evidence the program cannot forge;
  * a list of privileged or escape-only system calls (set*id, mount, namespaces, ptrace,
    modules, bpf, keys, ...) kills the process with SIGSYS: the runtime's own profile answers
    EPERM, which a program can also raise by itself; the signal it cannot;
  * a system call of a foreign ABI (x32, i386 on x86_64, arm32 on arm64) kills with SIGSYS.
- Landlock, where the kernel has it: the worker may create, write, truncate or remove files
  only beneath the writable roots the supervisor names (the scratch /tmp, /dev/shm, /proc) and
  write only /dev/null, /dev/zero and /dev/full besides. /dev/termination-log is not among
  them: the user's code gets no writable path to it at all (the supervisor, not landlocked,
  keeps writing it). Without Landlock (older kernels, gVisor, a runtime profile that refuses
  it) the rlimit above still bounds that file.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import stat
import struct

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
EPERM, ENOSYS, EOPNOTSUPP = 1, 38, 95

LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
OFF_NR, OFF_ARCH = 0, 4


def _arg_offset(index: int) -> int:
    return 16 + 8 * index  # the low 32 bits on a little-endian machine


KILLED = (
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "capset",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "add_key",
    "request_key",
    "keyctl",
    "userfaultfd",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "sethostname",
    "setdomainname",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "fanotify_init",
    "iopl",
    "ioperm",
    "syslog",
    "vhangup",
    "lookup_dcookie",
)
# (system call, index of its signal argument)
SIGNALLING = (
    ("kill", 1),
    ("tkill", 1),
    ("tgkill", 2),
    ("rt_sigqueueinfo", 1),
    ("rt_tgsigqueueinfo", 2),
    ("pidfd_send_signal", 1),
)
KERNEL_ONLY_SIGNALS = (int(signal.SIGSYS), int(signal.SIGXFSZ))

# From the kernel's unistd headers (x86_64: asm/unistd_64.h; arm64: asm-generic/unistd.h).
_X86_64 = {
    "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setresuid": 117,
    "setresgid": 119, "setfsuid": 122, "setfsgid": 123, "setgroups": 116, "capset": 126,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "bpf": 321, "perf_event_open": 298, "add_key": 248, "request_key": 249, "keyctl": 250,
    "userfaultfd": 323, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
    "settimeofday": 164, "clock_settime": 227, "sethostname": 170, "setdomainname": 171,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "quotactl": 179,
    "fanotify_init": 300, "iopl": 172, "ioperm": 173, "syslog": 103, "vhangup": 153,
    "lookup_dcookie": 212, "fallocate": 285, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "kill": 62, "tkill": 200, "tgkill": 234,
    "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "pidfd_send_signal": 424,
}  # fmt: skip
_AARCH64 = {
    "setuid": 146, "setgid": 144, "setreuid": 145, "setregid": 143, "setresuid": 147,
    "setresgid": 149, "setfsuid": 151, "setfsgid": 152, "setgroups": 159, "capset": 91,
    "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
    "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "ptrace": 117, "process_vm_readv": 270,
    "process_vm_writev": 271, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
    "finit_module": 273, "delete_module": 106, "bpf": 280, "perf_event_open": 241,
    "add_key": 217, "request_key": 218, "keyctl": 219, "userfaultfd": 282, "reboot": 142,
    "swapon": 224, "swapoff": 225, "acct": 89, "settimeofday": 170, "clock_settime": 112,
    "sethostname": 161, "setdomainname": 162, "open_by_handle_at": 265,
    "name_to_handle_at": 264, "quotactl": 60, "fanotify_init": 262, "syslog": 116,
    "vhangup": 58, "lookup_dcookie": 18, "fallocate": 47, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "kill": 129, "tkill": 130, "tgkill": 131,
    "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "pidfd_send_signal": 424,
}  # fmt: skip
# machine -> (AUDIT_ARCH_*, system call numbers, lowest number of a foreign ABI or None)
ARCHES = {
    "x86_64": (0xC000003E, _X86_64, 0x40000000),  # __X32_SYSCALL_BIT
    "aarch64": (0xC00000B7, _AARCH64, None),
}


# Landlock (same numbers on x86_64 and arm64).
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_WRITE_FILE = 1 << 1
FS_MAKE_AND_REMOVE = sum(1 << bit for bit in range(4, 13))  # REMOVE_DIR .. MAKE_SYM
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
WRITABLE_FILES = ("/dev/null", "/dev/zero", "/dev/full")


class ConfineError(Exception):
    """The worker cannot be confined on this machine: it must not start."""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_program(machine: str | None = None) -> bytes:
    """The classic-BPF filter described in the module docstring, for this machine."""
    arch = machine or platform.machine()
    if arch not in ARCHES:
        raise ConfineError(f"no seccomp filter for machine {arch!r}")
    audit_arch, numbers, foreign = ARCHES[arch]
    prog = [
        _insn(LD_W_ABS, 0, 0, OFF_ARCH),
        _insn(JEQ_K, 1, 0, audit_arch),
        _insn(RET_K, 0, 0, RET_KILL_PROCESS),
        _insn(LD_W_ABS, 0, 0, OFF_NR),
    ]
    if foreign is not None:
        prog += [_insn(JGE_K, 0, 1, foreign), _insn(RET_K, 0, 0, RET_KILL_PROCESS)]

    def refuse(name: str, action: int) -> None:
        if name in numbers:  # iopl/ioperm exist on x86 only
            prog.extend([_insn(JEQ_K, 0, 1, numbers[name]), _insn(RET_K, 0, 0, action)])

    for name in KILLED:
        refuse(name, RET_KILL_PROCESS)
    refuse("fallocate", RET_ERRNO | EOPNOTSUPP)
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        refuse(name, RET_ERRNO | ENOSYS)
    for name, index in SIGNALLING:
        # Not this call: skip its 5-instruction block with the number still loaded.
        first, second = KERNEL_ONLY_SIGNALS
        prog += [
            _insn(JEQ_K, 0, 5, numbers[name]),
            _insn(LD_W_ABS, 0, 0, _arg_offset(index)),
            _insn(JEQ_K, 2, 0, first),
            _insn(JEQ_K, 1, 0, second),
            _insn(RET_K, 0, 0, RET_ALLOW),
            _insn(RET_K, 0, 0, RET_ERRNO | EPERM),
        ]
    prog.append(_insn(RET_K, 0, 0, RET_ALLOW))
    return b"".join(prog)


def install_seccomp(program: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    count = len(program) // 8
    buf = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    # Unprivileged filters need no_new_privs (the pod sets it too: allowPrivilegeEscalation).
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfineError(f"PR_SET_NO_NEW_PRIVS failed: errno {ctypes.get_errno()}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise ConfineError(f"installing the seccomp filter failed: errno {ctypes.get_errno()}")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int | None:
    """The kernel's Landlock ABI version, or None where it cannot be used."""
    try:
        version = _libc().syscall(
            SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
        )
    except (OSError, AttributeError):
        return None
    return int(version) if version > 0 else None


def install_landlock(writable_roots: list[str]) -> bool:
    """Write access only beneath `writable_roots` (and to WRITABLE_FILES); False if the kernel
    has no Landlock. Reading is not restricted: the pod's own permissions decide that."""
    abi = landlock_abi()
    if abi is None:
        return False
    handled = FS_WRITE_FILE | FS_MAKE_AND_REMOVE
    handled |= FS_REFER if abi >= 2 else 0
    handled |= FS_TRUNCATE if abi >= 3 else 0
    file_rights = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    libc = _libc()
    attr = struct.pack("Q", handled)  # struct landlock_ruleset_attr, handled_access_fs only
    ruleset = libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        raise ConfineError(f"landlock_create_ruleset failed: errno {ctypes.get_errno()}")
    try:
        for path in dict.fromkeys([*writable_roots, *WRITABLE_FILES]):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not in this container: nothing to allow
            try:
                # A rule on a file may only carry the rights a file has.
                rights = handled if stat.S_ISDIR(os.fstat(fd).st_mode) else file_rights
                # struct landlock_path_beneath_attr (packed): __u64 allowed_access; __s32 fd
                beneath = struct.pack("=Qi", rights, fd)
                if libc.syscall(
                    SYS_LANDLOCK_ADD_RULE,
                    ctypes.c_int(ruleset),
                    LANDLOCK_RULE_PATH_BENEATH,
                    beneath,
                    ctypes.c_uint32(0),
                ):
                    raise ConfineError(
                        f"landlock rule for {path} failed: errno {ctypes.get_errno()}"
                    )
            finally:
                os.close(fd)
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)):
            raise ConfineError(f"landlock_restrict_self failed: errno {ctypes.get_errno()}")
    finally:
        os.close(ruleset)
    return True


def set_limits(max_processes: int, max_file_bytes: int) -> None:
    # 1, not 0: a core_pattern that pipes to a handler on the node ignores RLIMIT_CORE 0 (the
    # handler writes to the node's disk); the kernel refuses piped dumps at exactly 1, and a
    # file dump smaller than a page is never written either.
    resource.setrlimit(resource.RLIMIT_CORE, (1, 1))
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    nproc = max_processes if hard == resource.RLIM_INFINITY else min(max_processes, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    fsize = max_file_bytes if hard == resource.RLIM_INFINITY else min(max_file_bytes, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def confine(max_processes: int, max_file_bytes: int, writable_roots: list[str]) -> None:
    """Everything above, in the forked child just before exec; raises ConfineError."""
    program = seccomp_program()  # built before the limits: it needs no more memory after
    set_limits(max_processes, max_file_bytes)
    install_seccomp(program)  # also sets no_new_privs, which Landlock needs as well
    install_landlock(writable_roots)
