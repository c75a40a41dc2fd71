/* sysprobe: try syscalls that containerd's default seccomp profile denies and print one line per
 * probe, "NAME OK" or "NAME E<errno>", so a test can tell a filter's EPERM from success. Built
 * static by the test harness (tests/src/sysprobe.rs) and bind-mounted into a busybox container.
 * Every probe is harmless when it succeeds: a new session keyring, a user namespace in a child
 * that exits at once, a tmpfs mounted on a private dir, NULL arguments for kexec and modules. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    if (rc < 0)
        printf("%s E%d\n", name, errno);
    else
        printf("%s OK\n", name);
    fflush(stdout);
}

/* A child made by raw clone with `flags` exits at once; the parent reaps it. */
static long clone_probe(unsigned long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

/* unshare in a forked child, so the probe changes nothing for the next ones. */
static long unshare_probe(int flags) {
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(flags) == 0 ? 0 : errno);
    int st = 0;
    waitpid(pid, &st, 0);
    int e = WIFEXITED(st) ? WEXITSTATUS(st) : 255;
    if (e == 0)
        return 0;
    errno = e;
    return -1;
}

int main(void) {
    report("getpid", syscall(SYS_getpid));
    report("keyctl", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, 0));
    report("add_key", syscall(SYS_add_key, "user", "berth-probe", "x", 1, -2 /* process keyring */));
    report("unshare_user", unshare_probe(CLONE_NEWUSER));
    report("unshare_mount", unshare_probe(CLONE_NEWNS));
    report("clone_newuser", clone_probe(CLONE_NEWUSER));
    mkdir("/tmp/sysprobe-mnt", 0700);
    report("mount", mount("none", "/tmp/sysprobe-mnt", "tmpfs", 0, NULL));
    umount2("/tmp/sysprobe-mnt", MNT_DETACH);
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
    report("init_module", syscall(SYS_init_module, 0, 0, ""));
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    report("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE;
    pe.size = sizeof pe;
    pe.config = PERF_COUNT_SW_TASK_CLOCK;
    pe.exclude_kernel = 1;
    pe.exclude_hv = 1;
    report("perf_event_open", syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */));
    report("get_mempolicy", syscall(SYS_get_mempolicy, 0, 0, 0, 0, 0));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, 0));
    report("setns", syscall(SYS_setns, -1, 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, 0, 0));
    report("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
    report("pivot_root", syscall(SYS_pivot_root, "/nonexistent", "/nonexistent"));
    report("acct", syscall(SYS_acct, 0));
    report("swapoff", syscall(SYS_swapoff, "/nonexistent"));
    return 0;
}
