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
    ASSERT_EQ(n, 5);
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
