/* error.c -- messages and names for the engine's error codes. */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <string.h>

#include "pm.h"

const char *pm_strerror(int err)
{
    switch (err) {
#define PM__MSG(name, code, msg)                                               \
    case PM_E##name:                                                           \
        return msg;
        PM_ERRNO_MAP(PM__MSG)
#undef PM__MSG
    case 0:
        return "success";
    default:
        if (err <= PM_EUSER)
            return "error returned by a callback";
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}

const char *pm_errname(int err)
{
    switch (err) {
#define PM__NAME(name, code, msg)                                              \
    case PM_E##name:                                                           \
        return "PM_E" #name;
        PM_ERRNO_MAP(PM__NAME)
#undef PM__NAME
    case -ENOMEM:
        return "ENOMEM";
    case -EINVAL:
        return "EINVAL";
    case -EAGAIN:
        return "EAGAIN";
    case -EINTR:
        return "EINTR";
    case -ECHILD:
        return "ECHILD";
    case -ETIMEDOUT:
        return "ETIMEDOUT";
    default:
        if (err <= PM_EUSER)
            return "PM_EUSER";
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
        if (err < 0 && err > -4096) {
            const char *n = strerrorname_np(-err);
            if (n)
                return n;
        }
#endif
        return "UNKNOWN";
    }
}

int pm_version(void)
{
    return PM_VERSION;
}

const char *pm_version_string(void)
{
    return PM_VERSION_STRING;
}
