/* test_errors.c -- pm_strerror and pm_errname. */
#include <limits.h>

#include "task.h"

TEST_IMPL(errors_every_code)
{
    int n = 0;
    int codes[16];
#define CHECK_CODE(name, code, msg)                                            \
    do {                                                                       \
        ASSERT_EQ(PM_E##name, code);                                           \
        ASSERT_LT(PM_E##name, -4000); /* beyond every errno value */           \
        ASSERT_STREQ(pm_strerror(PM_E##name), msg);                            \
        ASSERT_STREQ(pm_errname(PM_E##name), "PM_E" #name);                    \
        codes[n++] = PM_E##name;                                               \
    } while (0);
    PM_ERRNO_MAP(CHECK_CODE)
#undef CHECK_CODE
    ASSERT_EQ(n, 6);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            ASSERT_NE(codes[i], codes[j]);

    ASSERT_STREQ(pm_strerror(0), "success");
    ASSERT_STREQ(pm_errname(-ENOMEM), "ENOMEM");
    ASSERT_STREQ(pm_errname(-EINVAL), "EINVAL");
    ASSERT_STREQ(pm_errname(-EAGAIN), "EAGAIN");
    ASSERT_STREQ(pm_errname(-ECHILD), "ECHILD");
    ASSERT_STREQ(pm_strerror(-ENOMEM), strerror(ENOMEM));
    ASSERT_STREQ(pm_strerror(-EINVAL), strerror(EINVAL));
    ASSERT_STREQ(pm_errname(-4999), "UNKNOWN");
    ASSERT_STREQ(pm_errname(12345), "UNKNOWN");
    ASSERT_STREQ(pm_strerror(12345), "unknown error");
    /* Never NULL, for anything. */
    for (int e = -5000; e <= 5000; e++) {
        ASSERT(pm_strerror(e) != NULL);
        ASSERT(pm_errname(e) != NULL);
    }
}

/* "Returns a static message for any code": INT_MIN included (a check hook
 * may return anything).  Negating it is undefined behaviour, which UBSan
 * reports in the asan build. */
TEST_IMPL(errors_int_min)
{
    ASSERT(pm_strerror(INT_MIN) != NULL);
    ASSERT(pm_errname(INT_MIN) != NULL);
    ASSERT(pm_strerror(INT_MIN + 1) != NULL);
}

/* Every -errno has its name (pm_errname(-42) is not "UNKNOWN"); codes at or
 * below PM_EUSER are the callbacks' own, named as such and never read as
 * -errno. */
TEST_IMPL(errors_names_and_callback_range)
{
    ASSERT_STREQ(pm_errname(-ENOMSG), "ENOMSG"); /* 42 on Linux */
    ASSERT_STREQ(pm_errname(-EPIPE), "EPIPE");
    ASSERT_STREQ(pm_errname(-E2BIG), "E2BIG");
    ASSERT_STREQ(pm_errname(PM_EBUSY), "PM_EBUSY");
    ASSERT_LT(PM_EUSER, -4096);
    ASSERT_STREQ(pm_errname(PM_EUSER), "PM_EUSER");
    ASSERT_STREQ(pm_errname(PM_EUSER - 17), "PM_EUSER");
    ASSERT_STREQ(pm_strerror(PM_EUSER - 17), "error returned by a callback");
    ASSERT_STREQ(pm_errname(-4999), "UNKNOWN");
}

/* The header's version and the library's. */
TEST_IMPL(errors_version)
{
    ASSERT_EQ(pm_version(), PM_VERSION);
    ASSERT_EQ(PM_VERSION, PM_VERSION_MAJOR * 10000 + PM_VERSION_MINOR * 100 +
                              PM_VERSION_PATCH);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", PM_VERSION_MAJOR,
             PM_VERSION_MINOR, PM_VERSION_PATCH);
    ASSERT_STREQ(pm_version_string(), want);
    ASSERT_STREQ(PM_VERSION_STRING, want);
}
