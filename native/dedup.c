/* Duplicate suppression: the table's life (dedup.h holds the per-packet functions). */
#include "dedup.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

struct dd_table *dd_new(unsigned window_ms)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(struct dd_table))) { /* sets on cache lines */
        errno = ENOMEM;
        return NULL;
    }
    struct dd_table *t = memset(p, 0, sizeof *t);
    /* the hash's keys: from the kernel's pool, which is ready long before a sensor starts */
    if (getrandom(t->secret, sizeof t->secret, 0) != (ssize_t)sizeof t->secret) {
        int err = errno ? errno : EIO;
        free(t);
        errno = err;
        return NULL;
    }
    t->window_t = (uint32_t)(((uint64_t)window_ms * 1000000ull) >> DD_TICK_SHIFT);
    t->refs = 1;
    return t;
}

struct dd_table *dd_share(struct dd_table *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&t->shared, 1, __ATOMIC_RELEASE);
    return t;
}

void dd_release(struct dd_table *t)
{
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(t);
}
