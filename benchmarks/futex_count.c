/*
 * benchmarks/futex_count.c -- counts the engine's futex waits and wakes per
 * process, without tracing: an LD_PRELOAD shim over glibc's syscall() (the
 * engine's only way to the futex, engine/src/wait.c), reporting on stderr
 * when each process ends (exit, or _exit as workers do).  strace -c counts
 * them too, but slows every system call by tens of microseconds, which
 * makes the waiters sleep more than they would (see docs/benchmarks.md).
 *
 *   cc -O2 -shared -fPIC -o /tmp/futex_count.so benchmarks/futex_count.c -ldl
 *   LD_PRELOAD=/tmp/futex_count.so python script.py
 *   -> "pid 1234 futex wait 12 wake 345" for the caller and each worker
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static long nwait, nwake;

long syscall(long nr, ...)
{
    static long (*real)(long, ...);
    va_list ap;
    long a[6];
    va_start(ap, nr);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    if (nr == SYS_futex) {
        if ((a[1] & 127) == FUTEX_WAIT)
            nwait++;
        else if ((a[1] & 127) == FUTEX_WAKE)
            nwake++;
    }
    return real(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

__attribute__((destructor)) static void report(void)
{
    if (nwait || nwake) {
        char b[128];
        int n = snprintf(b, sizeof b, "pid %d futex wait %ld wake %ld\n",
                         (int)getpid(), nwait, nwake);
        if (write(2, b, (size_t)n) < 0) {
            /* nothing to do */
        }
    }
}

/* Workers leave with _exit, which runs no destructor. */
void _exit(int code)
{
    report();
    syscall(SYS_exit_group, code);
    for (;;)
        ;
}
